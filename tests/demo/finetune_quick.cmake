# Smoke test of the LibTorch demo: `finetune_omniglot --quick --verify` must pass its checks
# (metrics in range, NC-Init drift 0 and Kaiming-normal drift near 2 at the start, Recall@1
# improved, torch loss equal to nc::proxy_anchor_loss), and a second run from scratch (the
# backbone pretrained again) must write bit-identical logs.
#   cmake -DEXE=<finetune_omniglot> -DWORK_DIR=<scratch dir> -P finetune_quick.cmake
foreach(var EXE WORK_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "finetune_quick.cmake: pass -D${var}=...")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK_DIR})
foreach(run 1 2)
  execute_process(COMMAND ${EXE} --quick --verify --cache ${WORK_DIR}/cache${run} --out ${WORK_DIR}/run${run}
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "run ${run}: finetune_omniglot --quick --verify exited with ${rc}")
  endif()
endforeach()
foreach(f epochs.csv summary.csv curves.csv table.md)
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK_DIR}/run1/${f} ${WORK_DIR}/run2/${f}
                  RESULT_VARIABLE differ)
  if(differ)
    message(FATAL_ERROR "${f} differs between two runs with the same seeds (${WORK_DIR}/run1, ${WORK_DIR}/run2)")
  endif()
endforeach()
message(STATUS "two runs wrote identical epochs.csv, summary.csv, curves.csv and table.md")
