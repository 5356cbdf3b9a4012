# Install the build into a prefix, then build examples/cpp against it with find_package and with pkg-config,
# and run both on BUNDLE: what a user's project does.
set(PREFIX ${BUILD}/install-test)
file(REMOVE_RECURSE ${PREFIX} ${BUILD}/example-build)
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${ARGN} failed (${rc}):\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()
run(${CMAKE_COMMAND} --install ${BUILD} --prefix ${PREFIX})
run(${CMAKE_COMMAND} -S ${SOURCE} -B ${BUILD}/example-build -DCMAKE_PREFIX_PATH=${PREFIX})
run(${CMAKE_COMMAND} --build ${BUILD}/example-build)
run(${BUILD}/example-build/caption ${BUNDLE})
message(STATUS "find_package example: ${last_output}")

execute_process(COMMAND ${CMAKE_COMMAND} -E env PKG_CONFIG_PATH=${PREFIX}/lib/pkgconfig pkg-config --cflags --libs edgevlm
                OUTPUT_VARIABLE flags OUTPUT_STRIP_TRAILING_WHITESPACE)
separate_arguments(flags)
run(cc ${SOURCE}/caption.c -o ${BUILD}/example-build/caption-pc ${flags})
run(${BUILD}/example-build/caption-pc ${BUNDLE})
message(STATUS "pkg-config example: ${last_output}")
