// VMDK inspection for the inventory tool: just enough to learn a disk's capacity and which extent files
// travel with it, so a lab VM's VirtualDisk reports the same capacity as the image the test put in.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

const (
	sectorSize = 512
	// sparseMagic is "KDMV" read as a little-endian uint32: hosted sparse and streamOptimized extents.
	sparseMagic = 0x564d444b
	// maxDescriptorBytes bounds how much of a text descriptor we read: real descriptors are a few hundred
	// bytes, and a file this big that starts with the descriptor banner is not one we should trust.
	maxDescriptorBytes = 64 << 10
	// maxCapacityBytes is 64 TiB, vSphere's largest virtual disk; anything above is a corrupt header.
	maxCapacityBytes = 64 << 40
	descriptorBanner = "# Disk DescriptorFile"
)

// vmdkInfo is what the inventory tool needs from an image file.
type vmdkInfo struct {
	CapacityBytes int64
	// Extents are the files, relative to the descriptor's directory, that a descriptor-only VMDK refers to.
	// Empty for a monolithic sparse or streamOptimized file, whose data is inside the file itself.
	Extents []string
}

// inspectVMDK reads the sparse header or the text descriptor of path.
func inspectVMDK(path string) (vmdkInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return vmdkInfo{}, fmt.Errorf("open VMDK: %w", err)
	}
	defer f.Close()

	var head [sectorSize]byte
	n, err := io.ReadFull(f, head[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return vmdkInfo{}, fmt.Errorf("read VMDK header of %s: %w", path, err)
	}
	if n >= 20 && binary.LittleEndian.Uint32(head[0:4]) == sparseMagic {
		sectors := binary.LittleEndian.Uint64(head[12:20])
		if sectors == 0 || sectors > maxCapacityBytes/sectorSize {
			return vmdkInfo{}, fmt.Errorf("%s: sparse header capacity at byte 12 is %d sectors, outside 1..%d",
				path, sectors, maxCapacityBytes/sectorSize)
		}
		return vmdkInfo{CapacityBytes: int64(sectors) * sectorSize}, nil
	}
	if !bytes.HasPrefix(head[:n], []byte(descriptorBanner)) {
		return vmdkInfo{}, fmt.Errorf("%s is not a VMDK: no sparse magic KDMV at byte 0 and no %q banner "+
			"(pass capacityBytes to serve an arbitrary file)", path, descriptorBanner)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return vmdkInfo{}, fmt.Errorf("rewind %s: %w", path, err)
	}
	return parseDescriptor(path, io.LimitReader(f, maxDescriptorBytes+1))
}

// parseDescriptor sums the extent lines (`RW 2097152 FLAT "x-flat.vmdk" 0`) of a text descriptor.
func parseDescriptor(path string, r io.Reader) (vmdkInfo, error) {
	var info vmdkInfo
	var total uint64
	read := 0
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		read += len(sc.Bytes()) + 1
		if read > maxDescriptorBytes {
			return vmdkInfo{}, fmt.Errorf("%s: descriptor is longer than %d bytes", path, maxDescriptorBytes)
		}
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || (fields[0] != "RW" && fields[0] != "RDONLY" && fields[0] != "NOACCESS") {
			continue
		}
		sectors, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			return vmdkInfo{}, fmt.Errorf("%s line %d: extent size %q is not a sector count", path, line, fields[1])
		}
		total += sectors
		if total > maxCapacityBytes/sectorSize {
			return vmdkInfo{}, fmt.Errorf("%s line %d: extents add up to more than %d bytes", path, line, int64(maxCapacityBytes))
		}
		if fields[2] != "ZERO" && len(fields) >= 4 {
			name := strings.Trim(strings.Join(fields[3:], " "), " ")
			if end := strings.LastIndex(name, "\""); strings.HasPrefix(name, "\"") && end > 0 {
				name = name[1:end]
			}
			if name == "" || filepath.IsAbs(name) || strings.Contains(name, "..") {
				return vmdkInfo{}, fmt.Errorf("%s line %d: extent file %q must be a plain relative name", path, line, name)
			}
			info.Extents = append(info.Extents, name)
		}
	}
	if err := sc.Err(); err != nil {
		return vmdkInfo{}, fmt.Errorf("%s: read descriptor: %w", path, err)
	}
	if total == 0 {
		return vmdkInfo{}, fmt.Errorf("%s: descriptor has no extent lines, so its capacity is unknown", path)
	}
	info.CapacityBytes = int64(total) * sectorSize
	return info, nil
}
