//go:build linux

package main

// NBD protocol values for the tests' own minimal clients and the boot
// test's proxy, which check bytes that no library shows. Named after the
// protocol document (doc/proto.md of NetworkBlockDevice/nbd).
const (
	specMagicInit     = 0x4e42444d41474943 // NBDMAGIC
	specMagicOpt      = 0x49484156454F5054 // IHAVEOPT
	specMagicOptReply = 0x3e889045565a9    // option reply magic
	specMagicRequest  = 0x25609513         // NBD_REQUEST_MAGIC
	specMagicSimple   = 0x67446698         // NBD_SIMPLE_REPLY_MAGIC

	specFlagFixedNewstyle = 1 << 0 // NBD_FLAG_FIXED_NEWSTYLE
	specFlagNoZeroes      = 1 << 1 // NBD_FLAG_NO_ZEROES
	specFlagCNoZeroes     = 1 << 1 // NBD_FLAG_C_NO_ZEROES

	specOptExportName = 1 // NBD_OPT_EXPORT_NAME
	specOptList       = 3 // NBD_OPT_LIST
	specOptGo         = 7 // NBD_OPT_GO

	specRepAck        = 1         // NBD_REP_ACK
	specRepServer     = 2         // NBD_REP_SERVER
	specRepInfo       = 3         // NBD_REP_INFO
	specRepErrUnknown = 1<<31 + 6 // NBD_REP_ERR_UNKNOWN

	specTFlagHasFlags = 1 << 0 // NBD_FLAG_HAS_FLAGS
	specTFlagReadOnly = 1 << 1 // NBD_FLAG_READ_ONLY

	specCmdRead        = 0 // NBD_CMD_READ
	specCmdWrite       = 1 // NBD_CMD_WRITE
	specCmdDisc        = 2 // NBD_CMD_DISC
	specCmdFlush       = 3 // NBD_CMD_FLUSH
	specCmdTrim        = 4 // NBD_CMD_TRIM
	specCmdWriteZeroes = 6 // NBD_CMD_WRITE_ZEROES

	specEIO    = 5  // NBD_EIO
	specEINVAL = 22 // NBD_EINVAL
)
