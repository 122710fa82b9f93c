cmake_minimum_required(VERSION 3.20)

# Declare the version of HEP Tools we use
# (must be done before including heptools-common)
set(heptools_version  107)

include(${CMAKE_CURRENT_LIST_DIR}/heptools-common.cmake)
include(heptools-base)
include(heptools-experimental OPTIONAL)
include(heptools-contrib)

# Application Area Projects
LCG_AA_project(ROOT   6.32.02   GIT=https://github.com/root-project/root.git)
LCG_AA_project(HepMC  2.06.11)
LCG_AA_project(Geant4 11.2.1    CLHEP=2.4.7.1)
LCG_external_package(CLHEP   2.4.7.1   clhep)

# this release moves pythia8 on: the base's 311 is replaced (evtgen still pins 311)
LCG_external_package(pythia8        312            ${MCGENPATH}/pythia8      lhapdf=6.5.4)

LCG_external_package(cuda           12.4
                     "nvidia")     # quoted directory argument

if(LCG_WITH_CUDA)                  # not known to the importer: warned, taken as false
  LCG_external_package(cudnn        9.1.0                                     )
endif()

set(PY_LIST  "numpy;scipy")
LCG_top_packages(ROOT Geant4 ${PY_LIST} pythia8 evtgen)
