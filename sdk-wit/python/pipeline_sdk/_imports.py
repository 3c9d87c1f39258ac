"""Lists the top-level imports and exports of a WebAssembly component.

    pipeline-sdk imports out.wasm            # one "import NAME" / "export NAME" a line
    pipeline-sdk imports --imports out.wasm  # import names only

Pure Python, no dependencies: reads only the component's top-level import
(id 10) and export (id 11) sections, which is what a host links against
(`wasm-tools component wit out.wasm` shows the same names with types).
"""

import sys


class _Reader:
    def __init__(self, data, pos=0, end=None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self):
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u32(self):
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def name(self):
        n = self.u32()
        s = self.data[self.pos : self.pos + n].decode("utf-8")
        self.pos += n
        return s

    def extern_name(self):
        tag = self.byte()
        if tag == 0x00:
            return self.name()
        if tag == 0x01:  # name with a version suffix
            n = self.name()
            vs = self.name()
            return n + vs
        raise ValueError("unknown import/export name tag 0x%02x at %d" % (tag, self.pos - 1))

    def externdesc(self):
        kind = self.byte()
        if kind == 0x00:  # core module: 0x00 0x11 typeidx
            self.byte()
            self.u32()
            return "core-module"
        if kind in (0x01, 0x04, 0x05):
            self.u32()
            return {0x01: "func", 0x04: "component", 0x05: "instance"}[kind]
        if kind == 0x02:  # value: bound
            b = self.byte()
            self.u32() if b == 0x00 else self.valtype()
            return "value"
        if kind == 0x03:  # type: eq idx | sub resource
            if self.byte() == 0x00:
                self.u32()
            return "type"
        raise ValueError("unknown externdesc 0x%02x" % kind)

    def valtype(self):
        b = self.data[self.pos]
        if b >= 0x73:  # primitive value type
            self.pos += 1
        else:
            self.u32()


def imports_exports(data):
    if data[:4] != b"\0asm":
        raise ValueError("not a WebAssembly binary")
    if data[6:8] != b"\x01\x00":
        raise ValueError("a core WebAssembly module, not a component")
    r = _Reader(data, 8)
    imports, exports = [], []
    while r.pos < len(data):
        sid = r.byte()
        size = r.u32()
        end = r.pos + size
        s = _Reader(data, r.pos, end)
        if sid == 10:
            for _ in range(s.u32()):
                name = s.extern_name()
                imports.append((name, s.externdesc()))
        elif sid == 11:
            for _ in range(s.u32()):
                name = s.extern_name()
                sort = s.byte()
                if sort == 0x00:
                    s.byte()
                s.u32()
                if s.byte() == 0x01:
                    s.externdesc()
                exports.append(name)
        r.pos = end
    return imports, exports


def main(argv):
    only_imports = "--imports" in argv
    paths = [a for a in argv if not a.startswith("--")]
    if len(paths) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(paths[0], "rb") as f:
        data = f.read()
    imports, exports = imports_exports(data)
    for name, kind in imports:
        print(name if only_imports else "import %s (%s)" % (name, kind))
    if not only_imports:
        for name in exports:
            print("export %s" % name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
