# The dev3 nightly slot: ROOT master on top of the 107 base.
set(heptools_version dev3)
include(heptools-base)

LCG_AA_project(ROOT  HEAD  GIT=https://github.com/root-project/root.git)
LCG_AA_project(COOL  3f0c1b7e4a0d52a6c1e1a4b6c0d2e3f4a5b6c7d8  GIT=https://gitlab.example.org/lcgcool/cool.git)
LCG_top_packages(ROOT COOL)
