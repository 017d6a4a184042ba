package config_test

import (
	"fmt"
	"net/netip"

	"boardnbd/config"
)

func ExampleParse() {
	c, err := config.Parse([]byte(`version: 1
exports:
  - name: rootfs
    path: /srv/boards/%s/rootfs.img
    copy_on_write: persistent
    overlay: /var/lib/boardnbd/%s.overlay
    allow: [10.0.0.0/8]
`), "boardnbd.yaml")
	if err != nil {
		fmt.Println(err)
		return
	}
	e := c.Exports[0]
	client := netip.MustParseAddr("10.0.0.7")
	fmt.Println(c.Listen, c.Limits.MaxPayload)
	fmt.Println(e.Name, e.Allows(client), e.PathFor(client))

	_, err = config.Parse([]byte(`version: 1
exports:
  - name: rootfs
    path: /dev/mmcblk0p2
    readonly: yes
    allow: [10.0.0.0/33]
`), "boardnbd.yaml")
	fmt.Println(err)
	// Output:
	// [:10809] 33554432
	// rootfs true /srv/boards/10.0.0.7/rootfs.img
	// boardnbd.yaml:5: exports[0].readonly: want true or false, got string "yes" (YAML 1.2 has only true and false, unquoted)
	// boardnbd.yaml:6: exports[0].allow[0]: "10.0.0.0/33" is not a CIDR prefix (want e.g. 10.0.0.0/8)
}
