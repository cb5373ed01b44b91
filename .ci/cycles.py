#!/usr/bin/env python3
"""File-level import graph and circle finder for Tally's crate (lib and bin).

Usage:
    python3 .ci/cycles.py [SRC_DIR] [--check] [--summary] [--no-tests]
                          [--glob-edge names|always] [--all-edges] [--dot FILE]
                          [--move FROM:ITEM:TO ...] [--drop SRC:DST ...]

`.ci/run` runs it with --check: it exits 1, printing each circle with the imports that
make it (file:line and names) and the cheapest cuts, when any file imports a file that
imports it back, directly or round a longer loop (ARCHITECTURE.md, "Layers").
--move and --drop are what-if edits for planning a fix (the moved item's own imports are
not simulated). SRC_DIR defaults to the src/ beside this script's directory.  Each .rs file is a node, named by its path
relative to SRC_DIR.  Edges come from `use` declarations and from inline paths in
code (crate::, super::, self::, <crate-name>::, and paths whose first segment is a
name in scope: a child module, an imported name, a local item, or a glob-imported
name).  Paths are resolved through re-exports to the file that DEFINES the item.

  --no-tests          drop edges that occur inside #[cfg(test)] modules / items
  --glob-edge names   (default) `use M::*` yields edges only to the files that
                      define the glob-provided names actually used in the file
                      (falling back to M's file if nothing matched)
  --glob-edge always  additionally always add an edge to M's own file
  --all-edges         also print the full file-level edge list
  --dot FILE          write the file graph (SCC members only) as Graphviz
"""
import argparse
import os
import re
import sys
from collections import defaultdict

# ----------------------------------------------------------------------------
# Tokenizer (drops comments incl. doc comments; keeps strings as STR tokens)
# ----------------------------------------------------------------------------

IDENT_RE = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')
NUM_RE = re.compile(r'[0-9][0-9A-Za-z_]*(\.[0-9][0-9A-Za-z_]*)?')


class Tok:
    __slots__ = ('k', 'v', 'line')

    def __init__(self, k, v, line):
        self.k, self.v, self.line = k, v, line

    def __repr__(self):
        return f'{self.k}:{self.v}@{self.line}'


def tokenize(src):
    toks = []
    i, n, line = 0, len(src), 1
    while i < n:
        c = src[i]
        if c == '\n':
            line += 1
            i += 1
            continue
        if c.isspace():
            i += 1
            continue
        # comments
        if src.startswith('//', i):
            j = src.find('\n', i)
            i = n if j < 0 else j
            continue
        if src.startswith('/*', i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith('/*', j):
                    depth += 1
                    j += 2
                elif src.startswith('*/', j):
                    depth -= 1
                    j += 2
                else:
                    if src[j] == '\n':
                        line += 1
                    j += 1
            i = j
            continue
        # raw strings / byte strings / raw identifiers
        m = re.match(r'(br|r)(#*)"', src[i:i + 300])
        if m:
            hashes = m.group(2)
            end = '"' + hashes
            j = src.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            body = src[i:j]
            toks.append(Tok('str', body, line))
            line += body.count('\n')
            i = j
            continue
        if src.startswith('r#', i) and i + 2 < n and (src[i + 2].isalpha() or src[i + 2] == '_'):
            m = IDENT_RE.match(src, i + 2)
            toks.append(Tok('id', m.group(0), line))
            i = m.end()
            continue
        if c == '"' or (c == 'b' and i + 1 < n and src[i + 1] == '"'):
            j = i + (2 if c == 'b' else 1)
            start_line = line
            buf = []
            while j < n and src[j] != '"':
                if src[j] == '\\':
                    buf.append(src[j:j + 2])
                    if src[j + 1:j + 2] == '\n':
                        line += 1
                    j += 2
                    continue
                if src[j] == '\n':
                    line += 1
                buf.append(src[j])
                j += 1
            toks.append(Tok('str', ''.join(buf), start_line))
            i = j + 1
            continue
        if c == "'" or (c == 'b' and i + 1 < n and src[i + 1] == "'"):
            j = i + (2 if c == 'b' else 1)
            if j < n and src[j] == '\\':
                k = src.find("'", j + 2)
                toks.append(Tok('chr', src[i:k + 1], line))
                i = k + 1
                continue
            if j + 1 < n and src[j + 1] == "'":
                toks.append(Tok('chr', src[i:j + 2], line))
                i = j + 2
                continue
            # lifetime / label
            m = IDENT_RE.match(src, j)
            if m:
                toks.append(Tok('life', m.group(0), line))
                i = m.end()
                continue
            i += 1
            continue
        if c.isalpha() or c == '_':
            m = IDENT_RE.match(src, i)
            toks.append(Tok('id', m.group(0), line))
            i = m.end()
            continue
        if c.isdigit():
            m = NUM_RE.match(src, i)
            # do not swallow `1..2`
            txt = m.group(0)
            toks.append(Tok('num', txt, line))
            i += len(txt)
            continue
        if src.startswith('::', i):
            toks.append(Tok('p', '::', line))
            i += 2
            continue
        if c == '$' and src.startswith('$crate', i):
            toks.append(Tok('id', '$crate', line))
            i += 6
            continue
        toks.append(Tok('p', c, line))
        i += 1
    return toks


# ----------------------------------------------------------------------------
# Module model
# ----------------------------------------------------------------------------

class Module:
    def __init__(self, crate, path, file, test=False):
        self.crate = crate          # 'lib' or 'bin'
        self.path = tuple(path)     # module path segments from the crate root
        self.file = file            # relative file name that holds this module
        self.test = test            # inside #[cfg(test)]
        self.children = {}          # name -> key of child module
        self.child_decl = {}        # name -> (file-declared, path attr) for file modules
        self.items = {}             # name -> pub?
        self.macro_items = {}       # name -> pub? (literal item names inside macro_rules bodies)
        self.imports = {}           # alias -> list of Use
        self.globs = []             # list of Use
        self.uses = []              # every Use declared (in this module's scope)
        self.paths = []             # inline paths: (segs, line, test)
        self.idents = {}            # bare identifier -> (first line, test)
        self.explicit_names = set()

    @property
    def key(self):
        return (self.crate, self.path)

    def __repr__(self):
        return f'Module({self.crate}::{"::".join(self.path)} @ {self.file})'


class Use:
    __slots__ = ('segs', 'alias', 'glob', 'line', 'pub', 'test', 'mod', 'leading', 'span')

    def __init__(self, segs, alias, glob, line, pub, test, mod, leading):
        self.segs, self.alias, self.glob, self.line = segs, alias, glob, line
        self.pub, self.test, self.mod, self.leading = pub, test, mod, leading
        self.span = ''      # ' Lstart-end' for a multi-line use statement

    def __repr__(self):
        return f'use {"::".join(self.segs)}{"::*" if self.glob else ""} as {self.alias} @{self.line}'


ITEM_KW = {'struct', 'enum', 'union', 'trait', 'type', 'fn', 'static', 'const'}
KEYWORDS = {
    'as', 'break', 'const', 'continue', 'crate', 'else', 'enum', 'extern', 'false', 'fn', 'for',
    'if', 'impl', 'in', 'let', 'loop', 'match', 'mod', 'move', 'mut', 'pub', 'ref', 'return',
    'self', 'Self', 'static', 'struct', 'super', 'trait', 'true', 'type', 'unsafe', 'use', 'where',
    'while', 'async', 'await', 'dyn', 'union', 'macro_rules',
}


class Crate:
    def __init__(self, src, crate_name):
        self.src = src
        self.crate_name = crate_name
        self.modules = {}      # key -> Module
        self.files = []

    def add_module(self, m):
        self.modules[m.key] = m
        return m

    # ---------------- parsing ----------------
    def load(self):
        for dp, dn, fn in os.walk(self.src):
            for f in fn:
                if f.endswith('.rs'):
                    self.files.append(os.path.relpath(os.path.join(dp, f), self.src))
        self.files.sort()
        if os.path.exists(os.path.join(self.src, 'lib.rs')):
            self.parse_file('lib.rs', 'lib', ())
        if os.path.exists(os.path.join(self.src, 'main.rs')):
            self.parse_file('main.rs', 'bin', ())
        parsed = {m.file for m in self.modules.values()}
        self.orphans = [f for f in self.files if f not in parsed]

    def parse_file(self, rel, crate, path, test=False):
        with open(os.path.join(self.src, rel), encoding='utf-8') as fh:
            toks = tokenize(fh.read())
        root = self.add_module(Module(crate, path, rel, test))
        # directory where child module files live
        base = os.path.dirname(rel)
        stem = os.path.splitext(os.path.basename(rel))[0]
        if stem in ('mod', 'lib', 'main'):
            child_dir = base
        else:
            child_dir = os.path.join(base, stem)
        self.parse_tokens(toks, root, child_dir, rel)

    def parse_tokens(self, toks, root, child_dir, rel):
        n = len(toks)
        # scope stack: entries (kind, module, child_dir, test)
        stack = [('mod', root, child_dir, root.test)]
        pending_attrs = []
        i = 0

        def cur_mod():
            for kind, m, cd, t in reversed(stack):
                if kind == 'mod':
                    return m, cd
            raise AssertionError

        def cur_test():
            return stack[-1][3]

        def at_mod_level():
            return stack[-1][0] == 'mod'

        def is_pub_before(j):
            # is token j (a keyword) preceded by a visibility qualifier?
            k = j - 1
            while k >= 0 and toks[k].k == 'id' and toks[k].v in ('unsafe', 'async', 'const', 'extern', 'default'):
                k -= 1
            if k >= 0 and toks[k].v == 'pub':
                return True
            if k >= 0 and toks[k].v == ')':
                d, kk = 0, k
                while kk >= 0:
                    if toks[kk].v == ')':
                        d += 1
                    elif toks[kk].v == '(':
                        d -= 1
                        if d == 0:
                            break
                    kk -= 1
                return kk > 0 and toks[kk - 1].v == 'pub'
            return False

        def attr_is_test(attr):
            vals = [t.v for t in attr]
            return vals[:1] == ['cfg'] and 'test' in vals and 'not' not in vals

        while i < n:
            t = toks[i]
            v = t.v
            # attributes
            if v == '#' and i + 1 < n and (toks[i + 1].v == '[' or (toks[i + 1].v == '!' and i + 2 < n and toks[i + 2].v == '[')):
                inner = toks[i + 1].v == '!'
                j = i + (2 if inner else 1)
                d, k = 0, j
                while k < n:
                    if toks[k].v == '[':
                        d += 1
                    elif toks[k].v == ']':
                        d -= 1
                        if d == 0:
                            break
                    k += 1
                attr = toks[j + 1:k]
                if inner:
                    if attr_is_test(attr):
                        # #![cfg(test)] makes the whole enclosing module test-only
                        kind, m, cd, _ = stack[-1]
                        stack[-1] = (kind, m, cd, True)
                        m.test = True
                else:
                    pending_attrs.append(attr)
                i = k + 1
                continue
            if v == '{':
                test = cur_test() or any(attr_is_test(a) for a in pending_attrs)
                stack.append(('block', None, None, test))
                pending_attrs = []
                i += 1
                continue
            if v == '}':
                if len(stack) > 1:
                    stack.pop()
                pending_attrs = []
                i += 1
                continue
            if v == ';':
                pending_attrs = []
                i += 1
                continue
            if t.k != 'id':
                i += 1
                continue
            mod, cd = cur_mod()
            test = cur_test() or any(attr_is_test(a) for a in pending_attrs)

            # ----- mod declarations
            if v == 'mod' and i + 1 < n and toks[i + 1].k == 'id' and i + 2 < n and toks[i + 2].v in (';', '{'):
                name = toks[i + 1].v
                path_attr = None
                for a in pending_attrs:
                    if len(a) >= 3 and a[0].v == 'path' and a[1].v == '=' and a[2].k == 'str':
                        path_attr = a[2].v
                child_path = mod.path + (name,)
                mod.children[name] = (mod.crate, child_path)
                mod.items.setdefault(name, is_pub_before(i))
                if toks[i + 2].v == ';':
                    if path_attr is not None:
                        # #[path] is relative to the directory of the declaring file
                        # (for a non-mod-rs file at the crate root this is its own dir)
                        f = os.path.normpath(os.path.join(os.path.dirname(rel), path_attr))
                        ccd = os.path.join(os.path.dirname(f), os.path.splitext(os.path.basename(f))[0])
                        self.parse_child(f, mod.crate, child_path, test, ccd)
                    else:
                        f1 = os.path.join(cd, name + '.rs')
                        f2 = os.path.join(cd, name, 'mod.rs')
                        if os.path.exists(os.path.join(self.src, f1)):
                            self.parse_file(os.path.normpath(f1), mod.crate, child_path, test)
                        elif os.path.exists(os.path.join(self.src, f2)):
                            self.parse_file(os.path.normpath(f2), mod.crate, child_path, test)
                        else:
                            print(f'warning: module file for {name} (declared in {rel}) not found', file=sys.stderr)
                    pending_attrs = []
                    i += 3
                    continue
                else:
                    child = self.add_module(Module(mod.crate, child_path, rel, test))
                    stack.append(('mod', child, os.path.join(cd, name), test))
                    pending_attrs = []
                    i += 3
                    continue

            # ----- use declarations
            if v == 'use' and (i == 0 or toks[i - 1].v != '::'):
                pub = is_pub_before(i)
                j = i + 1
                leading = False
                if j < n and toks[j].v == '::':
                    leading = True
                    j += 1
                out = []
                j = self.parse_use_tree(toks, j, [], out)
                for segs, alias, glob, line in out:
                    u = Use(segs, alias, glob, line, pub, test, mod, leading)
                    mod.uses.append(u)
                    if glob:
                        mod.globs.append(u)
                    elif alias and alias != '_':
                        mod.imports.setdefault(alias, []).append(u)
                        mod.explicit_names.add(alias)
                # skip to ';'
                while j < n and toks[j].v != ';':
                    j += 1
                if j < n and toks[j].line != t.line:
                    for u in mod.uses[len(mod.uses) - len(out):]:
                        u.span = f' L{t.line}-{toks[j].line}'
                pending_attrs = []
                i = j + 1
                continue

            # ----- item definitions (module level only)
            if at_mod_level():
                if v in ITEM_KW and i + 1 < n:
                    k = i + 1
                    if v == 'static' and toks[k].v == 'mut':
                        k += 1
                    nt = toks[k]
                    if nt.k == 'id' and nt.v not in ('fn', 'unsafe', 'extern', 'async', '_', 'const'):
                        if v != 'union' or (k + 1 < n and toks[k + 1].v in ('{', '<')):
                            mod.items.setdefault(nt.v, is_pub_before(i))
                            mod.explicit_names.add(nt.v)
                    i += 1
                    continue
                if v == 'macro_rules' and i + 2 < n and toks[i + 1].v == '!' and toks[i + 2].k == 'id':
                    mod.items.setdefault(toks[i + 2].v, True)
                    # items with literal names defined at the top of a macro arm's expansion
                    # (e.g. `pub enum Event { .. }` inside `macro_rules! define_events`):
                    # register them as items of this module (the macro is assumed to be
                    # invoked here).
                    k, d = i + 3, 0
                    while k < n:
                        tv = toks[k].v
                        if tv in ('(', '[', '{'):
                            d += 1
                        elif tv in (')', ']', '}'):
                            d -= 1
                            if d == 0:
                                break
                        elif d == 2 and toks[k].k == 'id' and tv in ITEM_KW and k + 1 < n \
                                and toks[k + 1].k == 'id' and toks[k - 1].v != '$' and toks[k + 1].v not in ('fn', '_'):
                            mod.macro_items.setdefault(toks[k + 1].v, is_pub_before(k))
                        k += 1
                    i += 3
                    continue

            # ----- inline paths and bare identifiers
            prev = toks[i - 1].v if i > 0 else None
            if prev in ('::', '.'):
                i += 1
                continue
            if prev == "'":
                i += 1
                continue
            segs = [v]
            line = t.line
            j = i + 1
            while j + 1 < n and toks[j].v == '::' and toks[j + 1].k == 'id':
                segs.append(toks[j + 1].v)
                line = toks[j + 1].line
                j += 2
            if len(segs) > 1:
                mod.paths.append((segs, t.line, test))
            else:
                # bare identifier: skip keywords, macro names (foo!), field labels
                if v not in KEYWORDS and not (j < n and toks[j].v == '!'):
                    if v not in mod.idents:
                        mod.idents[v] = (t.line, test)
                    elif mod.idents[v][1] and not test:
                        mod.idents[v] = (t.line, test)
                # first segment of a path also counts as ident usage
            if len(segs) > 1 and v not in KEYWORDS:
                if v not in mod.idents or (mod.idents[v][1] and not test):
                    mod.idents[v] = (t.line, test)
            i = j

    def parse_child(self, f, crate, path, test, ccd):
        with open(os.path.join(self.src, f), encoding='utf-8') as fh:
            toks = tokenize(fh.read())
        m = self.add_module(Module(crate, path, f, test))
        self.parse_tokens(toks, m, ccd, f)

    def parse_use_tree(self, toks, j, prefix, out):
        """Parse a use-tree starting at toks[j]; append (segs, alias, glob, line)."""
        n = len(toks)
        segs = list(prefix)
        while j < n:
            t = toks[j]
            if t.v == '*':
                out.append((segs, None, True, t.line))
                return j + 1
            if t.v == '{':
                j += 1
                while j < n and toks[j].v != '}':
                    if toks[j].v == ',':
                        j += 1
                        continue
                    j = self.parse_use_tree(toks, j, segs, out)
                return j + 1
            if t.k == 'id':
                name = t.v
                line = t.line
                if j + 1 < n and toks[j + 1].v == '::':
                    segs.append(name)
                    j += 2
                    continue
                alias = name
                full = segs + [name]
                if name == 'self':
                    full = segs
                    alias = segs[-1] if segs else 'self'
                j += 1
                if j + 1 < n and toks[j].v == 'as':
                    alias = toks[j + 1].v
                    j += 2
                out.append((full, alias, False, line))
                return j
            # unexpected
            return j + 1
        return j

    # ---------------- resolution ----------------
    def lib_root(self):
        return self.modules.get(('lib', ()))

    def parent(self, m):
        if not m.path:
            return None
        return self.modules.get((m.crate, m.path[:-1]))

    def is_descendant(self, req, m):
        return req.crate == m.crate and req.path[:len(m.path)] == m.path

    def lookup(self, m, name, req, depth, visiting, want_pub=False):
        """Name `name` in module m, as seen from module req. Returns a result or None.

        Result: ('mod', Module, via) or ('item', Module(defining), name, via) or
        ('ext',) for names that resolve outside the crate."""
        vis_ok = (not want_pub) or self.is_descendant(req, m)
        if name in m.children:
            cm = self.modules.get(m.children[name])
            if cm is not None:
                return ('mod', cm, ())
        if name in m.items and (vis_ok or m.items[name]):
            return ('item', m, name, ())
        if name in m.imports:
            for u in m.imports[name]:
                if not vis_ok and not u.pub:
                    continue
                r = self.resolve_use(u, depth + 1, visiting)
                if r is not None:
                    if r[0] == 'ext':
                        return r
                    return self._via(r, m)
        for u in m.globs:
            if not vis_ok and not u.pub:
                continue
            key = ('glob', id(u), name)
            if key in visiting:
                continue
            visiting.add(key)
            try:
                g = self.resolve_use(u, depth + 1, visiting)
                if g is None or g[0] != 'mod':
                    continue
                r = self.lookup(g[1], name, m, depth + 1, visiting, want_pub=True)
                if r is not None:
                    return r if r[0] == 'ext' else self._via(r, m)
            finally:
                visiting.discard(key)
        if name in m.macro_items and (vis_ok or m.macro_items[name]):
            return ('item', m, name, ())
        return None

    @staticmethod
    def _via(r, m):
        if r[0] == 'mod':
            return ('mod', r[1], r[2] + (m.file,))
        return ('item', r[1], r[2], r[3] + (m.file,))

    def start(self, m, segs, in_use, leading=False):
        """Return (module, remaining_segs) for the root of a path, or None if external."""
        if leading:
            return 'ext'
        first = segs[0]
        if first in ('crate', '$crate'):
            root = self.modules.get((m.crate, ())) if first == 'crate' else self.lib_root()
            return root, segs[1:]
        if first == 'super' or first == 'self':
            cur = m
            k = 0
            while k < len(segs) and segs[k] in ('super', 'self'):
                if segs[k] == 'super':
                    cur = self.parent(cur)
                    if cur is None:
                        return None
                k += 1
            return cur, segs[k:]
        if first == self.crate_name:
            return self.lib_root(), segs[1:]
        return ('scope', m), segs

    def resolve_segs(self, m, segs, depth=0, visiting=None, leading=False):
        if visiting is None:
            visiting = set()
        if depth > 40 or not segs:
            return None
        st = self.start(m, segs, True, leading)
        if st == 'ext':
            return ('ext',)
        if st is None:
            return None
        cur, rest = st
        via = ()
        if isinstance(cur, tuple):   # scope lookup for the first segment
            scope = cur[1]
            r = self.lookup(scope, rest[0], scope, depth, visiting)
            if r is None:
                return ('ext',)      # not in scope: extern crate / std / prelude
            if r[0] == 'ext':
                return r
            if r[0] == 'item':
                return r
            cur, via, rest = r[1], r[2], rest[1:]
        if cur is None:
            return None
        for k, s in enumerate(rest):
            r = self.lookup(cur, s, m, depth, visiting)
            if r is None:
                # unknown name (generated code, macro output, enum variant of unknown...)
                return ('item', cur, s, via + ('?',))
            if r[0] == 'ext':
                return None
            if r[0] == 'item':
                return ('item', r[1], r[2], via + r[3])
            cur, via = r[1], via + r[2]
        return ('mod', cur, via)

    def resolve_use(self, u, depth=0, visiting=None):
        if visiting is None:
            visiting = set()
        key = ('use', id(u))
        if key in visiting:
            return None
        visiting.add(key)
        try:
            if not u.segs:
                return ('mod', u.mod, ()) if u.glob else None
            return self.resolve_segs(u.mod, u.segs, depth, visiting, u.leading)
        finally:
            visiting.discard(key)

    # ---------------- edges ----------------
    def build_edges(self, glob_mode='names', include_tests=True, weak_globs=True):
        """Return list of edge records: (src_file, dst_file, line, name, kind, test, via).

        kinds: use        `use` of an item (resolved to its defining file)
               use-mod    `use` of a module that is never used as a path prefix (or pub)
               path       inline path through crate::/super::/self::/tally::/a module name
               glob-name  a name provided by `use M::*` and used in the file
               reexport-glob  `pub use child::*` (parent -> child)
               glob-weak  `use M::*` where no used name is defined in the crate through M
                          (only std/extern names matched, or nothing): a glob-only edge
        """
        edges = []

        def add(src, r, line, name, kind, test):
            if r is None or r[0] == 'ext':
                return
            dst = r[1].file
            via = tuple(v for v in (r[2] if r[0] == 'mod' else r[3]) if v not in ('?', src, dst))
            if dst == src:
                return
            if test and not include_tests:
                return
            if kind == 'glob-weak' and not weak_globs:
                return
            item = r[2] if r[0] == 'item' else '*'
            edges.append((src, dst, line, name, kind, test, via, item))

        for m in self.modules.values():
            src = m.file
            mtest = m.test
            # explicit uses
            for u in m.uses:
                test = u.test or mtest
                if u.glob:
                    g = self.resolve_use(u)
                    if g is None or g[0] == 'ext':
                        continue
                    gtxt = '::'.join(u.segs) + '::*'
                    if g[0] == 'item':    # enum glob: `use Enum::*`
                        add(src, g, u.line, gtxt, 'use' + u.span, test)
                        continue
                    gm = g[1]
                    matched = external = False
                    for ident, (line, itest) in sorted(m.idents.items()):
                        if ident in m.explicit_names or ident in m.children or ident in m.items or ident in m.macro_items:
                            continue
                        r = self.lookup(gm, ident, m, 0, set(), want_pub=True)
                        if r is None:
                            continue
                        if r[0] == 'ext':
                            external = True
                            continue
                        if r[0] == 'mod':
                            continue    # a module name via the glob: counted by its paths
                        matched = True
                        add(src, r, u.line, f'{ident} (used L{line})', 'glob-name', test or itest)
                    if u.pub:
                        add(src, ('mod', gm, g[2]), u.line, 'pub use ' + gtxt, 'reexport-glob', test)
                    elif glob_mode == 'always' or not matched:
                        why = '' if matched else (' (only std/extern names used through it)' if external
                                                  else ' (no crate name used through it)')
                        add(src, ('mod', gm, g[2]), u.line, gtxt + why,
                            'glob-weak' if not matched else 'use-glob', test)
                    continue
                r = self.resolve_use(u)
                if r is None or r[0] == 'ext':
                    continue
                name = '::'.join(u.segs)
                if u.alias and u.segs and u.alias != u.segs[-1]:
                    name += f' as {u.alias}'
                if u.pub:
                    name = 'pub use ' + name
                if r[0] == 'mod':
                    # importing a module: edges come from the paths that use it;
                    # keep an edge if it is re-exported or never used as a path prefix.
                    used = any(p[0][0] == u.alias for p in m.paths)
                    if u.pub or not used:
                        add(src, r, u.line, name + ' (module)', 'use-mod' + u.span, test)
                    continue
                kind = 'use'
                if u.pub and u.alias not in m.idents:
                    kind = 'reexport'     # `pub use` of a name the file itself never uses
                add(src, r, u.line, name, kind + u.span, test)
            # inline paths: only those not already covered by a `use` of an item
            for segs, line, ptest in m.paths:
                first = segs[0]
                if first == 'Self':
                    continue
                if first not in ('crate', '$crate', 'super', 'self', self.crate_name) and first not in m.children:
                    b = self.lookup(m, first, m, 0, set())
                    if b is None or b[0] != 'mod':
                        continue    # extern, local item, or an imported item (use edge covers it)
                r = self.resolve_segs(m, segs)
                if r is None or r[0] == 'ext':
                    continue
                add(src, r, line, '::'.join(segs), 'path', ptest or mtest)
        return edges


# ----------------------------------------------------------------------------
# Graph utilities
# ----------------------------------------------------------------------------

def tarjan(nodes, adj):
    index, low, on, st, out = {}, {}, set(), [], []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        st.append(v)
        on.add(v)
        for w in sorted(adj.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = st.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            strong(v)
    return out


def has_cycle(nodes, pairs):
    adj = defaultdict(set)
    for a, b in pairs:
        adj[a].add(b)
    return any(len(c) > 1 for c in tarjan(nodes, adj))


def breaking_edges(nodes, pairs, weight, max_k=4, max_solutions=6):
    """Smallest edge sets (by count, then by weight) whose removal makes `nodes` acyclic.

    Exhaustive up to max_k edges (skipped when the search would be too large)."""
    from itertools import combinations
    pairs = sorted(pairs)
    # every 2-cycle must lose one of its two edges: a lower bound and a strong prune
    for k in range(1, max_k + 1):
        n = len(pairs)
        total = 1
        for i in range(k):
            total = total * (n - i) // (i + 1)
        if total > 250000:
            return None, k
        sols = []
        for combo in combinations(pairs, k):
            cs = set(combo)
            if not has_cycle(nodes, [p for p in pairs if p not in cs]):
                sols.append(list(combo))
        if sols:
            sols.sort(key=lambda c: (sum(weight(e) for e in c), c))
            return sols[:max_solutions], k
    return [], max_k


def greedy_break(nodes, pairs, weight):
    """Greedy feedback-arc set: repeatedly drop the cheapest edge on the most short cycles."""
    pairs = set(pairs)
    removed = []
    while has_cycle(nodes, pairs):
        cyc = simple_cycles_short(nodes, pairs, limit=200)
        count = defaultdict(int)
        for c in cyc:
            for i in range(len(c)):
                count[(c[i], c[(i + 1) % len(c)])] += 1
        best = max(count, key=lambda e: (count[e] / weight(e), -weight(e), e))
        removed.append(best)
        pairs.discard(best)
    return removed


def simple_cycles_short(nodes, pairs, limit=20):
    """A few shortest cycles inside a component (BFS from each node)."""
    adj = defaultdict(set)
    for a, b in pairs:
        adj[a].add(b)
    found = set()
    res = []
    for s in sorted(nodes):
        # BFS shortest path back to s
        prev = {s: None}
        q = [s]
        done = False
        while q and not done:
            nq = []
            for v in q:
                for w in sorted(adj[v]):
                    if w == s:
                        path = [v]
                        while prev[path[-1]] is not None:
                            path.append(prev[path[-1]])
                        cyc = list(reversed(path))
                        k = min(range(len(cyc)), key=lambda i: cyc[i])
                        cyc = tuple(cyc[k:] + cyc[:k])
                        if cyc not in found:
                            found.add(cyc)
                            res.append(cyc)
                        done = True
                        break
                    if w not in prev:
                        prev[w] = v
                        nq.append(w)
                if done:
                    break
            q = nq
    res.sort(key=lambda c: (len(c), c))
    return res[:limit]


def top_of(crate, f):
    """Top-level module of a file: first path component (cli/* -> cli, main.rs -> main)."""
    if f == 'main.rs':
        return 'main'
    if f == 'lib.rs':
        return 'lib'
    first = f.split(os.sep)[0]
    return os.path.splitext(first)[0]


# ----------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('src', nargs='?', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src'))
    ap.add_argument('--check', action='store_true', help='exit 1 when there is a circle (and report it)')
    ap.add_argument('--crate-name', default='tally')
    ap.add_argument('--no-tests', action='store_true')
    ap.add_argument('--glob-edge', choices=['names', 'always'], default='names')
    ap.add_argument('--all-edges', action='store_true')
    ap.add_argument('--no-weak-globs', action='store_true',
                    help='drop glob-only edges (`use M::*` through which no crate name is used)')
    ap.add_argument('--dot')
    ap.add_argument('--move', action='append', default=[], metavar='FROM:ITEM:TO',
                    help='what-if: retarget every edge to ITEM defined in FROM to file TO')
    ap.add_argument('--drop', action='append', default=[], metavar='SRC:DST',
                    help='what-if: remove every edge from file SRC to file DST')
    ap.add_argument('--summary', action='store_true', help='print only the SCC member lists')
    args = ap.parse_args()

    crate = Crate(args.src, args.crate_name)
    crate.load()
    if crate.orphans:
        print('warning: files not reached from lib.rs/main.rs:', ', '.join(crate.orphans), file=sys.stderr)
    edges = crate.build_edges(args.glob_edge, include_tests=not args.no_tests,
                              weak_globs=not args.no_weak_globs)

    # what-if edits: retarget edges to moved items, drop whole file edges
    for mv in args.move:
        frm, item, to = mv.split(':')
        out = []
        for e in edges:
            if e[1] == frm and e[7] == item:
                e = (e[0], to) + e[2:]
                if e[0] == to:
                    continue
            out.append(e)
        edges = out
    drops = {tuple(d.split(':')) for d in args.drop}
    edges = [e for e in edges if (e[0], e[1]) not in drops]
    if args.move or args.drop:
        print(f'# what-if: moved {args.move} dropped {sorted(drops)}')

    by_pair = defaultdict(list)
    for e in edges:
        by_pair[(e[0], e[1])].append(e)
    adj = defaultdict(set)
    for a, b in by_pair:
        adj[a].add(b)
    nodes = set(crate.files)
    sccs = [c for c in tarjan(nodes, adj) if len(c) > 1]
    sccs.sort(key=lambda c: (-len(c), c))

    if args.check and not sccs:
        print(f'no import circles among {len(crate.files)} files')
        return 0
    if args.summary:
        for ci, comp in enumerate(sccs, 1):
            print(f'SCC {ci} ({len(comp)}): ' + ' '.join(comp))
        if not sccs:
            print('no file-level cycles')
        return 1 if (args.check and sccs) else 0

    def group_occ(occ):
        """Group occurrences of one file edge by (line, kind): one row per import site."""
        rows = defaultdict(list)
        meta = {}
        for src, dst, line, name, kind, test, via, _item in occ:
            rows[(line, kind)].append(name)
            t = meta.setdefault((line, kind), [test, set()])
            t[0] = t[0] and test
            t[1].update(via)
        out = []
        for (line, kind) in sorted(rows):
            names = list(dict.fromkeys(rows[(line, kind)]))
            test, via = meta[(line, kind)]
            out.append((line, kind, names, test, sorted(via)))
        return out

    def compact(names):
        """['pub use a::b::X', 'pub use a::b::Y'] -> 'pub use a::b::{X, Y}'."""
        pre = ''
        if all(n.startswith('pub use ') for n in names):
            pre, names = 'pub use ', [n[8:] for n in names]
        if len(names) > 1 and all('::' in n and ' ' not in n for n in names):
            heads = {n.rsplit('::', 1)[0] for n in names}
            if len(heads) == 1:
                h = heads.pop()
                return pre + h + '::{' + ', '.join(n.rsplit('::', 1)[1] for n in names) + '}'
        return pre + ', '.join(names)

    def fmt_rows(src, occ, indent='    '):
        lines = []
        for line, kind, names, test, via in group_occ(occ):
            s = f'{indent}{src}:{line}  [{kind}]  ' + compact(names)
            if via:
                s += f'   (via {", ".join(via)})'
            if test:
                s += '   [cfg(test)]'
            lines.append(s)
        return lines

    def weight(p):
        """Cost of cutting a file edge: number of distinct import sites (lines)."""
        return len({e[2] for e in by_pair[p]})

    def strength(p):
        occ = by_pair[p]
        if all(e[4] == 'glob-weak' for e in occ):
            return 'glob-only'
        if all(e[4].startswith('reexport') for e in occ):
            return 're-export only: the file does not use these names itself'
        if all(e[5] for e in occ):
            return 'test-only'
        return ''

    print(f'# source: {args.src}   files: {len(crate.files)}   file edges: {len(by_pair)}'
          f'   glob-edge={args.glob_edge}   tests={"excluded" if args.no_tests else "included"}'
          f'   weak-globs={"excluded" if args.no_weak_globs else "included"}')
    print('# legend: [use] `use` of an item, resolved through re-exports to the file defining it;')
    print('#   [use Lx-y] same, in a multi-line `use` spanning lines x-y (the line shown is the name\'s);')
    print('#   [reexport] `pub use` of a name the file itself never uses; [path] inline crate::/super::/')
    print('#   self::/tally::/module-alias path; [glob-name] a name reached through `use M::*` and used;')
    print('#   [glob-weak] a `use M::*` through which no crate item is used (only std/extern names);')
    print('#   "(via X)" = the path names X, which re-exports/imports the item; [cfg(test)] = test-only.')
    print()
    print(f'## File-level import cycles (strongly connected components with >1 file): {len(sccs)}')
    for ci, comp in enumerate(sccs, 1):
        cs = set(comp)
        inner = sorted(p for p in by_pair if p[0] in cs and p[1] in cs)
        print()
        print(f'### SCC {ci}: {len(comp)} files, {len(inner)} internal edges')
        for f in comp:
            print(f'  - {f}')
        cyc = simple_cycles_short(comp, inner, limit=12)
        print('  shortest cycles:')
        for c in cyc:
            print('    ' + ' -> '.join(c + (c[0],)))
        print('  edges inside the component (file:line [kind] imported names):')
        for p in inner:
            st = strength(p)
            print(f'  {p[0]} -> {p[1]}   ({weight(p)} import sites){"  <" + st + ">" if st else ""}')
            for l in fmt_rows(p[0], by_pair[p]):
                print(l)
        # what each member provides to the other members (helps decide what to move)
        print('  what each member provides to the others (item <- importers):')
        for f in comp:
            prov = defaultdict(set)
            for p in inner:
                if p[1] != f:
                    continue
                for e in by_pair[p]:
                    nm = e[7] if e[4] not in ('reexport-glob', 'glob-weak') else '*'
                    prov[nm].add(p[0].rsplit('/', 1)[-1])
            if prov:
                items = '; '.join(f'{k} <- {",".join(sorted(v))}' for k, v in sorted(prov.items()))
                print(f'    {f}: {items}')
        sols, k = breaking_edges(comp, inner, weight)
        if sols:
            print(f'  minimal cuts ({k} edge(s); cheapest first, cost = import sites):')
            for b in sols:
                print('    - ' + ' + '.join(f'{a} -> {c} ({weight((a, c))})' for a, c in b))
        else:
            g = greedy_break(comp, inner, weight)
            why = 'search too large' if sols is None else f'no cut of <= {k} edges'
            print(f'  ({why}); greedy cut of {len(g)} edges:')
            for a, c in g:
                print(f'    - {a} -> {c} ({weight((a, c))})')

    # ---------------- top-level modules ----------------
    tops = defaultdict(lambda: defaultdict(list))     # ta -> tb -> [file pairs]
    for (a, b) in by_pair:
        ta, tb = top_of(crate, a), top_of(crate, b)
        if ta != tb:
            tops[ta][tb].append((a, b))
    names = sorted({top_of(crate, f) for f in crate.files})

    def tweight(ta, tb):
        return sum(weight(p) for p in tops[ta][tb])

    print()
    print('## Top-level module dependencies (A -> B (import sites / file edges))')
    for a in names:
        deps = tops.get(a, {})
        if not deps:
            print(f'  {a:11s} -> (none)')
            continue
        parts = [f'{b}({tweight(a, b)}/{len(deps[b])})' for b in sorted(deps)]
        print(f'  {a:11s} -> ' + ', '.join(parts))
    print()
    print('## Top-level matrix (row imports column; number = import sites)')
    w = max(len(x) for x in names)
    print(' ' * (w + 1) + ' '.join(f'{x[:5]:>5s}' for x in names))
    for a in names:
        row = []
        for b in names:
            c = tweight(a, b) if b in tops.get(a, {}) else 0
            row.append(f'{c:5d}' if c else '    .')
        print(f'{a:{w}s} ' + ' '.join(row))
    tadj = {a: set(tops[a].keys()) for a in tops}
    tsccs = [c for c in tarjan(set(names), tadj) if len(c) > 1]
    print()
    print(f'## Top-level cycles: {len(tsccs)}')
    for comp in tsccs:
        cs = set(comp)
        print(f'  component: {", ".join(comp)}')
        tp = [(a, b) for a in comp for b in tops.get(a, {}) if b in cs]
        for c in simple_cycles_short(comp, tp):
            print('    cycle: ' + ' -> '.join(c + (c[0],)))
        for a, b in sorted(tp):
            print(f'    {a} -> {b}: {tweight(a, b)} import sites')
            for p in sorted(tops[a][b]):
                print(f'      {p[0]} -> {p[1]}')
                for l in fmt_rows(p[0], by_pair[p], indent='        '):
                    print(l)
        sols, k = breaking_edges(comp, tp, lambda e: tweight(*e))
        if sols:
            print(f'    minimal top-level cuts ({k} edge(s); cheapest first):')
            for b in sols:
                print('      - ' + ' + '.join(f'{x} -> {y} ({tweight(x, y)})' for x, y in b))

    if args.all_edges:
        print()
        print('## All file edges')
        for p in sorted(by_pair):
            occ = sorted(by_pair[p], key=lambda e: (e[2], e[3]))
            print(f'  {p[0]} -> {p[1]}  ({len(occ)})')
            for l in fmt_rows(p[0], occ):
                print(l)

    if args.dot:
        with open(args.dot, 'w') as fh:
            fh.write('digraph imports {\n  rankdir=LR;\n')
            for ci, comp in enumerate(sccs):
                fh.write(f'  subgraph cluster_{ci} {{ label="SCC {ci + 1}";\n')
                for f in comp:
                    fh.write(f'    "{f}";\n')
                fh.write('  }\n')
                cs = set(comp)
                for (a, b), occ in sorted(by_pair.items()):
                    if a in cs and b in cs:
                        fh.write(f'  "{a}" -> "{b}" [label="{len(occ)}"];\n')
            fh.write('}\n')
    return 1 if (args.check and sccs) else 0


if __name__ == '__main__':
    sys.exit(main())
