# Shared base of the invented 10x releases: externals every release carries.
# (pycvmfs test input, written for the heptools importer tests; versions are invented)
cmake_minimum_required(VERSION 3.20)

# please keep alphabetic order
LCG_external_package(Boost          1.85.0                                    )
LCG_external_package(fftw           3.3.10         fftw3                      )
LCG_external_package(GSL            2.7                                       )
LCG_external_package(Python         3.11.9                                    )
LCG_external_package(numpy          1.26.4                                    )
LCG_external_package(xz             5.4.6                                     )
LCG_external_package(zlib           1.3.1                                     )
LCG_external_package(CppUnit        1.14.0         author=1.14.0              )
LCG_external_package(XercesC        3.2.4          author=3.2.4               )

if(NOT ${LCG_OS} STREQUAL mac)
  LCG_external_package(Davix        0.8.7                                     )
endif()

# uuid: the system one on Debian, ours elsewhere
if(${LCG_OS}${LCG_OSVERS} STREQUAL el9)
  LCG_external_package(uuid         2.39.3                                    )
elseif(LCG_OS STREQUAL debian)
  LCG_external_package(libuuid      2.38.1         uuid                       )
else()
  LCG_external_package(uuid         1.42                                      )
endif()

if(LCG_COMP STREQUAL gcc AND LCG_COMPVERS VERSION_GREATER_EQUAL 12)
  LCG_external_package(fmt          10.2.1                                    )
else()
  LCG_external_package(fmt          9.1.0                                     )
endif()

if(NOT LCG_ARCH MATCHES "aarch64" AND (LCG_BUILD_TYPE STREQUAL opt OR LCG_BUILD_TYPE STREQUAL dbg))
  LCG_external_package(vdt          0.4.4                                     )
endif()

LCG_compiler(gcc13 gcc 13.1.0)
LCG_compiler(clang16 clang 16.0.3)

#---Generators-----------------------------------------------------------
set(MCGENPATH  MCGenerators)
include(heptools-generators)
