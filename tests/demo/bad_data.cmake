# A demo program given a missing and then a corrupt data file must exit with status 2 and an
# error message naming the file (not crash).
#   cmake -DEXE=<program> -DDATA_DIR=<data/> -DWORK_DIR=<scratch dir> -P bad_data.cmake
foreach(var EXE DATA_DIR WORK_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "bad_data.cmake: pass -D${var}=...")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR}/missing ${WORK_DIR}/corrupt)
# corrupt/: every data file replaced by text that is not an IDX array.
file(GLOB data_files RELATIVE ${DATA_DIR} ${DATA_DIR}/*.gz)
foreach(f IN LISTS data_files)
  file(WRITE ${WORK_DIR}/corrupt/${f} "this is not an IDX file\n")
endforeach()

foreach(case missing corrupt)
  execute_process(COMMAND ${EXE} --data ${WORK_DIR}/${case}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err
                  WORKING_DIRECTORY ${WORK_DIR})
  if(NOT rc EQUAL 2)
    message(FATAL_ERROR "${case} data: expected exit status 2, got '${rc}'\nstdout: ${out}\nstderr: ${err}")
  endif()
  string(FIND "${err}" "${WORK_DIR}/${case}/" named)
  if(named EQUAL -1 OR NOT err MATCHES "-ubyte\\.gz")
    message(FATAL_ERROR "${case} data: the error message does not name the file\nstderr: ${err}")
  endif()
  message(STATUS "${case} data: ${err}")
endforeach()
