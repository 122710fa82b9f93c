#[[ Monte Carlo generators of the invented 10x releases.
    Found through the importer's search path (it is not next to heptools-base). ]]
LCG_external_package(lhapdf         6.5.4          ${MCGENPATH}/lhapdf       )
LCG_external_package(pythia8        311            ${MCGENPATH}/pythia8      lhapdf=6.5.4)
LCG_external_package(tauola++       1.1.8          ${MCGENPATH}/tauola++     )
LCG_external_package(thepeg         2.2.3          ${MCGENPATH}/thepeg       author=2.2.3 )
LCG_external_package(herwig3        7.2.3          ${MCGENPATH}/herwig++
                     thepeg=2.2.3
                     hepevt=10000)
LCG_external_package(evtgen         2.2.1          ${MCGENPATH}/evtgen
                     tag=R02-02-01 pythia8=311 tauola++=1.1.8)
LCG_external_package(sherpa         2.2.15         ${MCGENPATH}/sherpa       author=2.2.15 hepevt=10000)
