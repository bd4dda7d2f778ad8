// nnp prints its effective uid. Installed setuid root in critest's nonewprivs test image
// (critest/images.py), it shows whether the runtime let the setuid bit raise the process's privileges:
// "Effective uid: 0" without no_new_privs, the caller's uid with it.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Printf("Effective uid: %d\n", os.Geteuid())
}
