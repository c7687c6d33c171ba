# Generated modules live in Bazel's output tree, beside these sources in the
# runfiles; extend_path lets any other directory on sys.path that holds
# generated modules for this package contribute them too.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
