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

# Say what is about to happen before a build: a first release build compiles about 240 crates
# (measured on a 2-core machine: see "Build time" in README.md).
if (-not (Test-Path $bin) -or ($newest -and $newest.LastWriteTimeUtc -gt (Get-Item $bin).LastWriteTimeUtc)) {
    if (Test-Path $bin) {
        Write-Host 'start.ps1: sources changed since the last build: rebuilding wshub (release): only what changed is compiled again'
    } else {
        Write-Host 'start.ps1: first start: building wshub in release mode (cargo build --release --bin wshub).'
        Write-Host '  It compiles wshub and about 240 dependency crates once: about 9 CPU-minutes,'
        Write-Host '  so 5 to 10 minutes on 2 idle cores, less with more. Later starts skip this.'
        Write-Host '  Progress follows (cargo shows [done/total] on a terminal).'
    }
    $watch = [System.Diagnostics.Stopwatch]::StartNew()
    cargo build --release --locked --bin wshub --manifest-path (Join-Path $root 'Cargo.toml')
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
    Write-Host ("start.ps1: built in {0:N0} s: $bin" -f $watch.Elapsed.TotalSeconds)
}
& $bin @args
exit $LASTEXITCODE
