# Work-arounds for the ROS 2 (Kilted) wheels on PyPI used as an ament prefix (a Python virtualenv).
# Both are no-ops on a regular ROS installation (apt, source build, colcon): nothing is changed there.
#
# 1. The wheels' exported CMake targets `<pkg>::<pkg>__rosidl_generator_py` (every message package,
#    transitively) carry the include directories of the machine that built the wheels, e.g.
#    /opt/python/cp311-cp311/include/python3.11 and that machine's NumPy include dir. CMake's generate step
#    then fails with
#      Imported target "<pkg>::<pkg>__rosidl_generator_py" includes non-existent path ...
#    For every such imported target (found through the IMPORTED_TARGETS directory property) that lists an
#    include directory that does not exist here, the missing entries are replaced by this machine's Python 3
#    and NumPy include directories.
#
# 2. rosidl_generator_py adds ${Python3_INCLUDE_DIRS} ${Python3_NumPy_INCLUDE_DIRS} as PUBLIC include dirs
#    of our own `<project>__rosidl_generator_py` library, which is exported. When the venv lives inside the
#    source tree (./.venv) the NumPy include dir is "prefixed in the source directory" and the generate step
#    fails for the export. Such plain paths inside the source/build tree are wrapped in $<BUILD_INTERFACE:>
#    (consumers of the installed package get the include dirs of their own Python anyway).
#
# Usage, after all find_package() / rosidl_generate_interfaces() calls (e.g. just before ament_package()):
#   include(cmake/fix_pypi_ros_include_dirs.cmake)
#   mafs_fix_pypi_ros_include_dirs()

function(mafs_fix_pypi_ros_include_dirs)
  # --- 1. imported targets with include dirs baked on the wheel build machine ---------------------------
  get_property(_imported DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  set(_fixed "")
  set(_python_found FALSE)
  foreach(_target IN LISTS _imported)
    if(NOT _target MATCHES "__rosidl_generator_py$")
      continue()
    endif()
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_missing FALSE)
    set(_kept "")
    foreach(_dir IN LISTS _dirs)
      # Keep generator expressions and existing paths untouched.
      if(_dir MATCHES "^\\$<" OR EXISTS "${_dir}")
        list(APPEND _kept "${_dir}")
      else()
        set(_missing TRUE)
      endif()
    endforeach()
    if(NOT _missing)
      continue()
    endif()
    if(NOT _python_found)
      # Same components and interpreter preference as rosidl_generator_py.
      set(Python3_FIND_UNVERSIONED_NAMES FIRST)
      find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
      set(_python_found TRUE)
    endif()
    list(APPEND _kept ${Python3_INCLUDE_DIRS} ${Python3_NumPy_INCLUDE_DIRS})
    list(REMOVE_DUPLICATES _kept)
    set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_kept}")
    list(APPEND _fixed ${_target})
  endforeach()
  if(_fixed)
    list(LENGTH _fixed _n)
    message(STATUS "mafs_ros: PyPI ROS wheels: repointed the include dirs of ${_n} imported "
      "*__rosidl_generator_py targets to ${Python3_INCLUDE_DIRS};${Python3_NumPy_INCLUDE_DIRS}")
  endif()

  # --- 2. our own exported generator_py target with include dirs inside the source/build tree ----------
  get_property(_own DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}" PROPERTY BUILDSYSTEM_TARGETS)
  foreach(_target IN LISTS _own)
    if(NOT _target MATCHES "__rosidl_generator_py$")
      continue()
    endif()
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_changed FALSE)
    set(_new "")
    foreach(_dir IN LISTS _dirs)
      if(NOT _dir MATCHES "^\\$<" AND IS_ABSOLUTE "${_dir}")
        file(RELATIVE_PATH _rel_src "${CMAKE_SOURCE_DIR}" "${_dir}")
        file(RELATIVE_PATH _rel_bin "${CMAKE_BINARY_DIR}" "${_dir}")
        if(NOT _rel_src MATCHES "^\\.\\." OR NOT _rel_bin MATCHES "^\\.\\.")
          set(_dir "$<BUILD_INTERFACE:${_dir}>")
          set(_changed TRUE)
        endif()
      endif()
      list(APPEND _new "${_dir}")
    endforeach()
    if(_changed)
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new}")
      message(STATUS "mafs_ros: include dirs of ${_target} inside the source tree (venv in the repository) "
        "limited to the build interface")
    endif()
  endforeach()
endfunction()
