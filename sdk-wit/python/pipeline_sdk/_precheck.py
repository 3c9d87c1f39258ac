"""Fast, static checks of a customer function file before the (slow) build.

    pipeline-sdk check CUSTOMER.py

Never imports or runs the customer's code. It only reports what is certainly
wrong; the authoritative checks (exactly one @transform, the module imports
cleanly) run inside the component at build time (componentize-py
pre-initialisation). The host interpreter may be older than the CPython
inside the component (3.14), so a file this Python cannot parse is left to the
real build rather than reported.

Exit status: 0 ok / not sure, 1 certainly wrong (message on stderr).
"""

import ast
import keyword
import os
import sys

# Module names the build itself uses, which a customer module must not shadow.
RESERVED = {
    "pipeline_sdk",
    "pipeline_app",
    "wit_world",
    "componentize_py_types",
    "componentize_py_runtime",
    "componentize_py_async_support",
    "poll_loop",
}


def _transform_names(tree):
    """Names that refer to pipeline_sdk.transform / the pipeline_sdk module."""
    direct, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline_sdk":
            for a in node.names:
                if a.name in ("transform", "*"):
                    direct.add(a.asname or "transform")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "pipeline_sdk":
                    modules.add(a.asname or a.name)
    return direct, modules


def _imports_sdk(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pipeline_sdk":
            return True
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == "pipeline_sdk" for a in node.names
        ):
            return True
    return False


def _is_transform(dec, direct, modules):
    if isinstance(dec, ast.Call):  # @transform()
        dec = dec.func
    if isinstance(dec, ast.Name):
        return dec.id in direct
    if isinstance(dec, ast.Attribute) and isinstance(dec.value, ast.Name):
        return dec.attr == "transform" and dec.value.id in modules
    return False


def check(path):
    stem = os.path.basename(path)[:-3] if path.endswith(".py") else None
    if stem is None:
        return "%s: expected a .py file" % path
    if not stem.isidentifier() or keyword.iskeyword(stem):
        return (
            "%s: the file name must be a valid Python module name "
            "(letters, digits, underscores), e.g. my_function.py" % path
        )
    if stem in RESERVED:
        return "%s: the module name %r is used by the build; rename the file" % (path, stem)
    stdlib = getattr(sys, "stdlib_module_names", ())
    if stem in stdlib:
        return (
            "%s: the module name %r shadows the Python standard library "
            "module of that name; rename the file" % (path, stem)
        )
    with open(path, "rb") as f:
        source = f.read()
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError:
        return None  # maybe newer syntax: the real build decides
    direct, modules = _transform_names(tree)
    decorated = []  # (function name, line of its @transform)
    for node in tree.body:  # module top level, unconditional
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in node.decorator_list:
                if _is_transform(d, direct, modules):
                    decorated.append((node.name, d.lineno))
    if len(decorated) > 1:
        where = " and ".join("'%s' (line %d)" % d for d in decorated)
        return (
            "%s:%d: more than one @transform function: %s; a module must "
            "define exactly one @transform function"
            % (path, decorated[1][1], where)
        )
    if not _imports_sdk(tree):
        return (
            "%s: does not import pipeline_sdk; decorate exactly one function "
            "with @transform (from pipeline_sdk import transform, Record)" % path
        )
    return None


def main(argv):
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    problem = check(argv[0])
    if problem:
        print("error: " + problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
