package backend_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"boardnbd/nbd/backend"
)

// An export of the second partition of a whole-disk image, with writes kept
// in a temporary overlay so the image itself stays untouched.
func Example() {
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	disk, err := backend.Open(filepath.Join(dir, "disk.img"), backend.Options{
		ReadOnly: true,
		Create:   16 << 20, // a sparse 16 MiB image, for the example
	})
	if err != nil {
		log.Fatal(err)
	}
	d := disk.Describe()
	fmt.Println(d.Kind, d.Size, "read-only:", d.ReadOnly)

	part, err := backend.NewSlice(disk, 8<<20, 8<<20)
	if err != nil {
		log.Fatal(err)
	}
	export, err := backend.NewOverlay(part, "", false)
	if err != nil {
		log.Fatal(err)
	}
	defer export.Close() // closes part and disk too

	if _, err := export.WriteAt([]byte("hello"), 4096); err != nil {
		log.Fatal(err)
	}
	buf := make([]byte, 5)
	export.ReadAt(buf, 4096)
	fmt.Printf("%s %d\n", buf, export.Size())
	// Output:
	// image file 16777216 read-only: true
	// hello 8388608
}
