#!/usr/bin/env bash
# Installs tcpscript for the GitHub Actions runner this runs on: the release
# archive for its OS and architecture, checked against the release's SHA-256,
# kept in the runner's tool cache, and put on PATH through $GITHUB_PATH.
# Where no archive fits, `cargo install --locked` builds the same version.
#
#   install.sh resolve   the version, target and folder, as step outputs
#   install.sh install   download, verify, unpack (or reuse the folder)
#
# Inputs, from action.yml (a test sets them by hand, see
# tests/integration/action.rs):
#   TCPSCRIPT_VERSION     0.1.0, v0.1.0 or latest
#   TCPSCRIPT_REPOSITORY  owner/name whose releases hold the archives
#   TCPSCRIPT_BASE_URL    where releases are downloaded from; default
#                         $GITHUB_SERVER_URL/$TCPSCRIPT_REPOSITORY/releases/download
#   RUNNER_OS, RUNNER_ARCH, RUNNER_TOOL_CACHE, RUNNER_TEMP, GITHUB_PATH,
#   GITHUB_OUTPUT (optional)  as GitHub sets them
set -euo pipefail

fail() {
  # An error annotation on the step, and the reason in its log.
  echo "::error title=tcpscript install::$*"
  echo "tcpscript install: $*" >&2
  exit 1
}

# Paths GitHub gives a Windows runner (C:\hostedtoolcache) as bash sees them.
unix_path() {
  if command -v cygpath >/dev/null; then cygpath -u "$1"; else printf '%s\n' "$1"; fi
}
# ...and back, for $GITHUB_PATH, which the runner reads natively.
native_path() {
  if command -v cygpath >/dev/null; then cygpath -w "$1"; else printf '%s\n' "$1"; fi
}

repository=${TCPSCRIPT_REPOSITORY:-tcpscript/tcpscript}
server=${GITHUB_SERVER_URL:-https://github.com}
base_url=${TCPSCRIPT_BASE_URL:-$server/$repository/releases/download}

# Sets `target`: the Rust target whose archive runs here, or nothing (then
# cargo install). Functions set globals rather than print, so that `fail`
# in them ends the script instead of a `$(...)` subshell.
find_target() {
  case "${RUNNER_OS:-}/${RUNNER_ARCH:-}" in
    Linux/X64) target=x86_64-unknown-linux-musl ;;
    Linux/ARM64) target=aarch64-unknown-linux-musl ;;
    macOS/X64) target=x86_64-apple-darwin ;;
    macOS/ARM64) target=aarch64-apple-darwin ;;
    Windows/X64) target=x86_64-pc-windows-msvc ;;
    *) target="" ;;
  esac
}

# Sets `version`: 0.1.0 from v0.1.0 or 0.1.0; `latest` (or nothing) is the
# newest release, which github.com names in the redirect of /releases/latest.
find_version() {
  version=${TCPSCRIPT_VERSION:-latest}
  if [ "$version" = latest ]; then
    local url
    url=$(curl -fsSLI --retry 3 -o /dev/null -w '%{url_effective}' "$server/$repository/releases/latest") ||
      fail "cannot find the latest release of $repository at $server"
    version=${url##*/}
    case "$version" in
      v[0-9]*) ;;
      *) fail "$repository has no release yet ($server/$repository/releases/latest led to $url)" ;;
    esac
  fi
  version=${version#v}
  case "$version" in
    [0-9]*.[0-9]*.[0-9]*) ;;
    *) fail "version must be latest or X.Y.Z (with or without v), not \`$version\`" ;;
  esac
}

# Sets `dir`, where this version lives in the tool cache: the layout of
# @actions/tool-cache, so that a self-hosted runner keeps it between jobs
# (a hosted one starts empty: action.yml restores it with actions/cache).
find_dir() {
  [ -n "${RUNNER_TOOL_CACHE:-}" ] || fail "RUNNER_TOOL_CACHE is not set"
  dir="$(unix_path "$RUNNER_TOOL_CACHE")/tcpscript/$version/${RUNNER_ARCH:-unknown}"
}

sha256() {
  if command -v sha256sum >/dev/null; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

resolve() {
  find_version
  find_target
  find_dir
  echo "tcpscript $version for ${target:-this runner (built from source)} in $dir"
  if [ -n "${GITHUB_OUTPUT:-}" ]; then
    {
      echo "version=$version"
      echo "target=${target:-source}"
      echo "dir=$(native_path "$dir")"
    } >>"$GITHUB_OUTPUT"
  fi
}

download() {
  curl -fsSL --retry 3 -o "$2" "$1" || fail "cannot download $1"
}

install() {
  local exe
  find_version
  find_target
  find_dir
  exe=tcpscript
  [ "${RUNNER_OS:-}" = Windows ] && exe=tcpscript.exe

  # A folder is only used once `.complete` says it was filled to the end:
  # an interrupted install leaves none, and is redone.
  if [ -f "$dir/.complete" ] && [ -x "$dir/bin/$exe" ]; then
    echo "tcpscript $version: cached in $dir"
  elif [ -n "$target" ]; then
    local archive work expected actual
    archive="tcpscript-$version-$target.tar.gz"
    [ "$target" = x86_64-pc-windows-msvc ] && archive="tcpscript-$version-$target.zip"
    work=$(mktemp -d "$(unix_path "${RUNNER_TEMP:-${TMPDIR:-/tmp}}")/tcpscript.XXXXXX")
    download "$base_url/v$version/$archive" "$work/$archive"
    download "$base_url/v$version/$archive.sha256" "$work/$archive.sha256"
    # `HASH  NAME`, as sha256sum writes it; only the hash is compared.
    expected=$(cut -d' ' -f1 <"$work/$archive.sha256" | tr -d '\r\n' | tr 'A-F' 'a-f')
    actual=$(sha256 "$work/$archive")
    if [ "${#expected}" -ne 64 ]; then
      fail "$archive.sha256 holds no SHA-256 (\`$(head -c 100 "$work/$archive.sha256")\`)"
    fi
    if [ "$expected" != "$actual" ]; then
      fail "checksum mismatch for $archive: expected $expected (from $archive.sha256), got $actual; not installing it"
    fi
    echo "tcpscript $version: $archive, SHA-256 $actual verified"
    case "$archive" in
      *.zip) (cd "$work" && unzip -q "$archive") ;;
      *) tar -xzf "$work/$archive" -C "$work" ;;
    esac
    [ -f "$work/tcpscript-$version-$target/$exe" ] ||
      fail "$archive has no tcpscript-$version-$target/$exe"
    rm -rf "$dir"
    mkdir -p "$dir/bin"
    mv "$work/tcpscript-$version-$target/$exe" "$dir/bin/$exe"
    chmod +x "$dir/bin/$exe"
    rm -rf "$work"
    touch "$dir/.complete"
  else
    # No archive for this OS/architecture: build the release's source. From
    # the repository, not crates.io, so that Cargo.toml's [patch] of Rhai
    # applies (a published crate drops it).
    command -v cargo >/dev/null ||
      fail "no release archive for ${RUNNER_OS:-?}/${RUNNER_ARCH:-?} and no cargo to build one (add dtolnay/rust-toolchain before this action)"
    echo "tcpscript $version: no archive for ${RUNNER_OS:-?}/${RUNNER_ARCH:-?}; cargo install --locked"
    rm -rf "$dir"
    cargo install --locked --git "$server/$repository" --tag "v$version" --root "$dir" tcpscript ||
      fail "cargo install of tcpscript $version failed"
    touch "$dir/.complete"
  fi

  [ -n "${GITHUB_PATH:-}" ] || fail "GITHUB_PATH is not set"
  native_path "$dir/bin" >>"$GITHUB_PATH"
  "$dir/bin/$exe" --version
}

case "${1:-}" in
  resolve) resolve ;;
  install) install ;;
  *)
    echo "usage: $0 resolve|install" >&2
    exit 2
    ;;
esac
