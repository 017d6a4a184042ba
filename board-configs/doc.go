// Package boardconfigs holds one ready boardnbd configuration per supported
// board, as YAML files a technician copies to /etc/boardnbd/config.yaml.
//
// It has no code. Its test loads every file through the real loader
// (config.Load) and checks what must hold across boards and against the
// rest of the tree: each file names a build target the Makefile has, never
// serves a board's own boot card writable, advertises itself with a board
// name, and keeps writable files where the hardened service unit lets
// boardnbd write.
package boardconfigs
