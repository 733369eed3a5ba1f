# Runs one libFuzzer target for ctest (tests/fuzz/CMakeLists.txt):
#   cmake -DFUZZER=<exe> -DSCRATCH=<dir> -DARTIFACTS=<dir/> -DARGS=<a;b;...> -DSEEDS=<dir> -P run_fuzzer.cmake
# SCRATCH is emptied and passed first (libFuzzer adds the inputs it finds there), the
# committed seed corpus SEEDS second, so SEEDS is only read. Fails when the fuzzer does
# (a crash, a sanitizer report, a leak, a timeout or out-of-memory input: see ARTIFACTS).
foreach(var FUZZER SCRATCH ARTIFACTS SEEDS)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_fuzzer.cmake: ${var} is not set")
  endif()
endforeach()
file(REMOVE_RECURSE ${SCRATCH})
file(MAKE_DIRECTORY ${SCRATCH} ${ARTIFACTS})
execute_process(
  COMMAND ${FUZZER} ${ARGS} -artifact_prefix=${ARTIFACTS} ${SCRATCH} ${SEEDS}
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${FUZZER} failed (${rc}); the input that failed is in ${ARTIFACTS}")
endif()
