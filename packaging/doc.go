// Package packaging holds what turns the boardnbd binary into something a
// board or a server runs: the systemd service and socket units, the OpenRC
// script, the nfpm configuration of the .deb, .rpm and .apk packages, the
// post-install and pre-remove scripts, the default configuration and the
// man pages.
//
// It has no code. Its tests build every release target with the Makefile
// and check the results with the real tools: file and readelf for static
// executables of the right machine, qemu-user to run the ARM and RISC-V
// builds and serve a disk to nbdinfo and nbdcopy, dpkg-deb, dpkg --root
// and rpm for the packages, systemd-analyze for the units, and groff and
// man for the man pages. A missing tool skips its test, except under
// CI=true, where it fails.
package packaging
