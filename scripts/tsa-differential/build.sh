#!/usr/bin/env bash
# Provenance: the team's shared tsa-daemon recipe (shared/tools/tsa-daemon/build.sh), kept here so
# the harness can be rebuilt from this repository alone; unchanged apart from this note.
# Rebuild KumoMTA's tsa-daemon offline from mirrored git repositories.
#
# Usage:
#   MIRROR=<dir holding owner+name/repo bare mirrors> [OUT=<build dir>] ./build.sh
#
# MIRROR must contain bare git mirrors (<owner>+<name>/repo) of these public repositories:
#   KumoCorp+kumomta  KumoCorp+rust-openssl  KumoCorp+libunbound-rs
#   KumoCorp+charset-normalizer-rs  sunng87+handlebars-rust  wez+redis-cell
# Nothing is fetched from git remotes; crates come from the Rust crate registry via cargo.
# Needs: a stable Rust toolchain, gcc/g++, make, cmake, perl, libssl-dev,
# and /usr/share/dict/words (Debian package `wamerican`) to regenerate the
# >4 MiB dictionary source file that the mirror snapshot lacks.
#
# Prints the path of the built binary on the last line.
set -euo pipefail

: "${MIRROR:?set MIRROR to the directory holding the owner+name/repo mirrors}"
OUT=${OUT:-$(mktemp -d -t tsa-build.XXXXXX)}
TOOLCHAIN=${TOOLCHAIN:-stable}   # the repo pins 1.92 via rust-toolchain.toml; override it
JOBS=${JOBS:-2}
export RUSTUP_TOOLCHAIN=$TOOLCHAIN

SRC=$OUT/src
DEPS=$OUT/deps
mkdir -p "$SRC" "$DEPS"

gd() { echo "$MIRROR/$1/repo"; }

# Extract a tree from a bare mirror, skipping blobs that the snapshot lacks.
# (git still prints "error: invalid object ..." for each skipped blob; harmless.)
extract() { # repo commitish dest
  local g; g=$(gd "$1")
  local excludes=()
  while read -r _m _t h p; do
    git --git-dir="$g" cat-file -e "$h" 2>/dev/null || excludes+=(":(exclude)$p")
  done < <(git --git-dir="$g" ls-tree -r "$2")
  rm -rf "$3"; mkdir -p "$3"
  git --git-dir="$g" archive "$2" -- . "${excludes[@]}" | tar -x -C "$3"
  for e in "${excludes[@]}"; do echo "  (missing from mirror: ${e#:(exclude)})" >&2; done
}

echo "== extracting sources into $OUT" >&2
extract KumoCorp+kumomta HEAD "$SRC"
# Revisions pinned in kumomta's Cargo.lock (libunbound's pinned rev is not in
# the mirror; its HEAD is used and ported to hickory-proto 0.26 below).
extract KumoCorp+charset-normalizer-rs 1f1dc21b49d30d73a99b0136497352b569947ac2 "$DEPS/charset-normalizer-rs"
extract sunng87+handlebars-rust c349c39557700e6a5b5e5273f2fc0f42574b79f3 "$DEPS/handlebars-rust"
extract wez+redis-cell 97d409c3a62f2a0f5518c31fc9b4b65afbce2053 "$DEPS/redis-cell"
extract KumoCorp+libunbound-rs HEAD "$DEPS/libunbound-rs"

# --- 1. regenerate crates/mod-smtp-response-normalize/src/dict.rs ----------
DICT=$SRC/crates/mod-smtp-response-normalize/src/dict.rs
if [ ! -s "$DICT" ]; then
  echo "== regenerating dict.rs with the crate's own codegen" >&2
  test -r /usr/share/dict/words || { echo "need /usr/share/dict/words (apt install wamerican)" >&2; exit 1; }
  (cd "$SRC/crates/mod-smtp-response-normalize/codegen" &&
     CARGO_TARGET_DIR="$OUT/codegen-target" cargo run --release -j "$JOBS" -q)
fi

# --- 2. openssl with KumoCorp's DANE additions ------------------------------
# The fork branch pinned by kumomta (dane-openssl-v0.10.80) is not mirrored;
# the mirror has an older 'dane' branch. Take its DANE commit as a diff and
# apply it on top of registry openssl 0.10.80 / openssl-sys 0.9.116.
echo "== preparing DANE-patched openssl crates" >&2
mkdir -p "$OUT/dl/src"
cat > "$OUT/dl/Cargo.toml" <<'EOF'
[package]
name = "dl"
version = "0.0.0"
edition = "2021"
[dependencies]
openssl = "=0.10.80"
openssl-sys = "=0.9.116"
EOF
echo 'fn main(){}' > "$OUT/dl/src/main.rs"
(cd "$OUT/dl" && cargo fetch -q)
REG=$(dirname "$(cd "$OUT/dl" && cargo metadata --format-version 1 -q |
      python3 -c 'import json,sys;m=json.load(sys.stdin);print([p["manifest_path"] for p in m["packages"] if p["name"]=="openssl"][0])')")
REG=$(dirname "$REG")
rm -rf "$DEPS/openssl-0.10.80" "$DEPS/openssl-sys-0.9.116"
cp -r "$REG/openssl-0.10.80" "$REG/openssl-sys-0.9.116" "$DEPS/"
O=$(gd KumoCorp+rust-openssl)
DANE=$(git --git-dir="$O" log -1 --format=%H --grep='expose DANE functions' dane)
BASE=$(git --git-dir="$O" rev-parse "$DANE^")
git --git-dir="$O" diff "$BASE" "$DANE" -- openssl/src/ssl/mod.rs \
  | sed -e 's#^\(---\|+++\) \([ab]\)/openssl/#\1 \2/#' -e 's#^diff --git a/openssl/\(.*\) b/openssl/#diff --git a/\1 b/#' \
  > "$OUT/dane-openssl.diff"
git --git-dir="$O" diff "$BASE" "$DANE" -- openssl-sys \
  | sed -e 's#^\(---\|+++\) \([ab]\)/openssl-sys/#\1 \2/#' -e 's#^diff --git a/openssl-sys/\(.*\) b/openssl-sys/#diff --git a/\1 b/#' \
  > "$OUT/dane-sys.diff"
# Two hunks do not apply cleanly (an import line and one constant); they are
# redone by hand below, so rejects are expected and discarded.
(cd "$DEPS/openssl-0.10.80" && patch -p1 -s < "$OUT/dane-openssl.diff" || true; find src -name '*.rej' -o -name '*.orig' | xargs rm -f)
(cd "$DEPS/openssl-sys-0.9.116" && patch -p1 -s < "$OUT/dane-sys.diff" || true; find src -name '*.rej' -o -name '*.orig' | xargs rm -f)
python3 - "$DEPS" <<'EOF'
import sys
d = sys.argv[1]
p = f"{d}/openssl-0.10.80/src/ssl/mod.rs"
s = open(p).read()
old = ("use crate::pkey::{HasPrivate, PKeyRef, Params, Private};\n"
       "#[cfg(ossl300)]\nuse crate::pkey::{PKey, Public};\n")
new = ("#[cfg(ossl300)]\nuse crate::pkey::PKey;\n"
       "use crate::pkey::{HasPrivate, PKeyRef, Params, Private, Public};\n")
assert old in s, "openssl import block changed"
s = s.replace(old, new)
assert "fn dane_enable" in s, "DANE hunks did not apply"
open(p, "w").write(s)
p = f"{d}/openssl-sys-0.9.116/src/x509_vfy.rs"
s = open(p).read()
anchor = "        pub const X509_V_ERR_NO_VALID_SCTS: c_int = 71;\n"
if "DANE_FLAG_NO_DANE_EE_NAMECHECKS" not in s:
    assert anchor in s
    s = s.replace(anchor, anchor + "        pub const DANE_FLAG_NO_DANE_EE_NAMECHECKS: c_ulong = 1;\n", 1)
open(p, "w").write(s)
p = f"{d}/openssl-sys-0.9.116/src/handwritten/ssl.rs"
assert "SSL_CTX_dane_enable" in open(p).read(), "openssl-sys DANE hunk did not apply"
EOF

# --- 3. port libunbound (mirror HEAD, v0.3) to hickory-proto 0.26 -----------
python3 - "$DEPS" <<'EOF'
import sys
d = sys.argv[1]
p = f"{d}/libunbound-rs/libunbound/Cargo.toml"
s = open(p).read()
s = s.replace('hickory-proto = "0.24"', 'hickory-proto = "0.26"')
open(p, "w").write(s)
p = f"{d}/libunbound-rs/libunbound/src/lib.rs"
s = open(p).read()
old = """use hickory_proto::error::ProtoResult;
use hickory_proto::op::response_code::ResponseCode;
use hickory_proto::rr::record_type::RecordType;
use hickory_proto::rr::{DNSClass, RData};
use hickory_proto::serialize::binary::{BinDecoder, Restrict};
"""
new = """use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use hickory_proto::rr::{DNSClass, RData};
use hickory_proto::serialize::binary::{BinDecoder, DecodeError, Restrict};
type ProtoResult<T> = Result<T, DecodeError>;
"""
if old in s:
    s = s.replace(old, new)
open(p, "w").write(s)
EOF

# --- 4. point the workspace's git dependencies at the local checkouts ------
python3 - "$SRC" "$DEPS" <<'EOF'
import re, sys
src, d = sys.argv[1:]
p = f"{src}/Cargo.toml"
s = open(p).read()
reps = [
 (r'charset-normalizer-rs = \{ git = "[^"]*", rev="[0-9a-f]+" \}', f'charset-normalizer-rs = {{ path = "{d}/charset-normalizer-rs" }}'),
 (r'handlebars = \{ version="6.3", git = "[^"]*", rev="[0-9a-f]+" \}', f'handlebars = {{ version="6.3", path = "{d}/handlebars-rust" }}'),
 (r'libunbound = \{git="[^"]*", rev="[0-9a-f]+"\}', f'libunbound = {{ path = "{d}/libunbound-rs/libunbound" }}'),
 (r'openssl = \{ version="0.10.80", git="[^"]*", branch="[^"]*" \}', f'openssl = {{ path = "{d}/openssl-0.10.80" }}'),
 (r'openssl-sys = \{ version="0.9.116", git="[^"]*", branch="[^"]*" \}', f'openssl-sys = {{ path = "{d}/openssl-sys-0.9.116" }}'),
]
for pat, new in reps:
    s, n = re.subn(pat, new, s)
    assert n == 1, f"pattern not found in root Cargo.toml: {pat}"
open(p, "w").write(s)
p = f"{src}/crates/throttle/Cargo.toml"
s = open(p).read()
s, n = re.subn(r'redis-cell-impl = \{ git = "[^"]*", rev="[0-9a-f]+" ,',
               f'redis-cell-impl = {{ path = "{d}/redis-cell/redis-cell-impl",', s)
assert n == 1
open(p, "w").write(s)
EOF

# --- 5. build -----------------------------------------------------------------
if [ "${BUILD:-1}" = 0 ]; then echo "== BUILD=0: sources prepared in $OUT" >&2; exit 0; fi
echo "== building tsa-daemon (release, no LTO) -- expect ~30-40 min on 2 cores" >&2
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$OUT/target}
(cd "$SRC" && cargo build --release -p tsa-daemon -j "$JOBS")
echo "== done; kumomta source (for assets/*.toml) is $SRC" >&2
echo "$CARGO_TARGET_DIR/release/tsa-daemon"
