# ctest registration of the demo programs' smoke tests (label "demo"). Included from
# examples/CMakeLists.txt after the examples' add_subdirectory calls, so that a target exists
# exactly when its example was configured (finetune_omniglot needs LibTorch).
#
# OMP_WAIT_POLICY=PASSIVE: LibTorch's and ncml's OpenMP threads otherwise spin while they wait,
# which on a busy two-core machine slows the demo down several times over.
if(TARGET finetune_omniglot)
  add_test(NAME demo.finetune_omniglot.quick
    COMMAND ${CMAKE_COMMAND} -DEXE=$<TARGET_FILE:finetune_omniglot>
      -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/demo_quick -P ${CMAKE_CURRENT_LIST_DIR}/finetune_quick.cmake)
  add_test(NAME demo.finetune_omniglot.bad_data
    COMMAND ${CMAKE_COMMAND} -DEXE=$<TARGET_FILE:finetune_omniglot> -DDATA_DIR=${PROJECT_SOURCE_DIR}/data
      -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/demo_bad_data_finetune -P ${CMAKE_CURRENT_LIST_DIR}/bad_data.cmake)
  set_tests_properties(demo.finetune_omniglot.quick demo.finetune_omniglot.bad_data PROPERTIES
    LABELS demo ENVIRONMENT OMP_WAIT_POLICY=PASSIVE)
  set_tests_properties(demo.finetune_omniglot.quick PROPERTIES TIMEOUT 900 RUN_SERIAL TRUE)
endif()
if(TARGET eigen_trainer)
  add_test(NAME demo.eigen_trainer COMMAND eigen_trainer)
  add_test(NAME demo.eigen_trainer.bad_data
    COMMAND ${CMAKE_COMMAND} -DEXE=$<TARGET_FILE:eigen_trainer> -DDATA_DIR=${PROJECT_SOURCE_DIR}/data
      -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/demo_bad_data_eigen -P ${CMAKE_CURRENT_LIST_DIR}/bad_data.cmake)
  set_tests_properties(demo.eigen_trainer demo.eigen_trainer.bad_data PROPERTIES
    LABELS demo ENVIRONMENT OMP_WAIT_POLICY=PASSIVE)
endif()
