# Finds xsimd (headers only, as qlm uses it). Debian's xsimd 8 package exports an interface
# link to a library named "xtl" without finding it, which fails at link time when xtl-dev is not
# installed; qlm uses no xtl feature, so that link is dropped when no xtl target exists.
find_package(xsimd REQUIRED)
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_qlm_xsimd_links xsimd INTERFACE_LINK_LIBRARIES)
  if(_qlm_xsimd_links)
    list(REMOVE_ITEM _qlm_xsimd_links xtl)
    set_property(TARGET xsimd PROPERTY INTERFACE_LINK_LIBRARIES "${_qlm_xsimd_links}")
  endif()
  unset(_qlm_xsimd_links)
endif()
