# Runs wshub, building it first (cargo build --release) when the binary is missing or older than
# any source: src/, static/, Cargo.toml or Cargo.lock. Every argument goes to wshub unchanged:
#   ./start.ps1 --addr 0.0.0.0:8080 --jwt-secret $env:SECRET
$ErrorActionPreference = 'Stop'

$root = $PSScriptRoot
$targetDir = if ($env:CARGO_TARGET_DIR) { $env:CARGO_TARGET_DIR } else { Join-Path $root 'target' }
$exe = if ($env:OS -eq 'Windows_NT') { 'wshub.exe' } else { 'wshub' }
$bin = Join-Path (Join-Path $targetDir 'release') $exe

$sources = 'src', 'static', 'Cargo.toml', 'Cargo.lock' |
    ForEach-Object { Join-Path $root $_ } |
    Where-Object { Test-Path $_ }
$newest = Get-ChildItem -Path $sources -Recurse -File |
    Sort-Object LastWriteTimeUtc -Descending |
    Select-Object -First 1

if (-not (Test-Path $bin) -or ($newest -and $newest.LastWriteTimeUtc -gt (Get-Item $bin).LastWriteTimeUtc)) {
    cargo build --release --manifest-path (Join-Path $root 'Cargo.toml')
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
}
& $bin @args
exit $LASTEXITCODE
