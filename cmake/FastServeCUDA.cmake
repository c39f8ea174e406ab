# FastServeCUDA.cmake — the CUDA toolchain (included when FS_WITH_CUDA):
# nvcc for sm_80 (A100) and sm_90 (H100, H200), warnings as errors for nvcc
# and its host compiler under FS_WERROR, the toolkit's libraries and NCCL.
#
# Device code is compiled into the cuda backend plugin and into the
# attention plugins' device halves; each links the CUDA runtime statically
# (cudart_static), so a plugin built here loads on a machine without a GPU
# or driver and only fails, with a message, when asked for a device.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES "80;90" CACHE STRING "GPU architectures to compile for (A100; H100/H200)")
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)
message(STATUS "FastServe: CUDA ${CUDAToolkit_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}")

# nvcc's warnings, and the host compiler's on the host half of .cu files
add_compile_options("$<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wno-unused-parameter>")
if(FS_WERROR)
  add_compile_options("$<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings;-Xcompiler=-Werror>")
endif()
if(FS_SANITIZE)
  # the sanitizers instrument host C code; device code is checked by
  # compute-sanitizer (tests/gpu)
  message(STATUS "FastServe: FS_SANITIZE builds CUDA code without host sanitizers")
endif()

# NCCL: beside the toolkit (its pip/conda layout puts it in lib/) or system-wide
find_path(FS_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_LIBRARY_ROOT}/include)
find_library(FS_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}/lib
  ${CUDAToolkit_LIBRARY_ROOT}/lib64)
if(FS_NCCL_INCLUDE_DIR AND FS_NCCL_LIBRARY)
  set(FS_NCCL ON)
  add_library(fs_nccl INTERFACE)
  target_link_libraries(fs_nccl INTERFACE ${FS_NCCL_LIBRARY})
  target_include_directories(fs_nccl SYSTEM INTERFACE ${FS_NCCL_INCLUDE_DIR})
  message(STATUS "FastServe: NCCL ${FS_NCCL_LIBRARY}: collectives on device buffers")
else()
  set(FS_NCCL OFF)
  message(STATUS "FastServe: NCCL not found: the cuda backend has no collectives (apt-get install libnccl-dev)")
endif()

# fs_cuda_target(TARGET): what every target with device code gets: the
# static CUDA runtime, position-independent device code, hidden symbols.
function(fs_cuda_target target)
  set_target_properties(${target} PROPERTIES
    CUDA_RUNTIME_LIBRARY None
    CUDA_VISIBILITY_PRESET hidden
    POSITION_INDEPENDENT_CODE ON)
  target_link_libraries(${target} PRIVATE CUDA::cudart_static)
endfunction()
