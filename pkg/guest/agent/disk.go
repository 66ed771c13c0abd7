package agent

import "golang.org/x/sys/unix"

// diskUsage reports the used and total MiB of the file system at path;
// zeros when it cannot tell.
func diskUsage(path string) (usedMB, totalMB int) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, 0
	}
	bs := uint64(st.Bsize)
	total := st.Blocks * bs
	used := (st.Blocks - st.Bfree) * bs
	return int(used >> 20), int(total >> 20)
}
