"""Re-exports Bazel 4's native C++ rules under the names rules_cc publishes.

Bazel 4 asks for @rules_cc while loading its own tools; Debian's rules_cc
is too new for it, so this in-repo stand-in keeps the build offline."""

cc_binary = native.cc_binary
cc_library = native.cc_library
cc_test = native.cc_test
cc_import = native.cc_import
cc_proto_library = native.cc_proto_library
cc_toolchain = native.cc_toolchain
cc_toolchain_suite = native.cc_toolchain_suite
fdo_prefetch_hints = native.fdo_prefetch_hints
fdo_profile = native.fdo_profile
objc_library = native.objc_library
objc_import = native.objc_import
