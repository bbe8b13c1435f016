// Inventory shaping: turn a JSON VM spec into a CreateVM_Task through the model's own code path (so
// every property vcsim derives stays consistent), with the disk images copied into the datastore first.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Bus limits as on vSphere 7/8, so specs that a real host would refuse fail here too.
const (
	maxControllersPerKind = 4  // SCSI, SATA and NVMe each allow buses 0..3
	maxIDEBuses           = 2  // IDE 0 and IDE 1, both built into every VM
	scsiUnits             = 16 // unit 7 is the controller itself
	scsiReservedUnit      = 7
	sataUnits             = 30
	nvmeUnits             = 15
	ideUnits              = 2
	maxDisks              = 64 // far above what tests need, low enough to bound copies and work
	maxNICs               = 10 // vSphere's per-VM limit
	// maxLeaseTimeoutSeconds is a day: longer only hides a client that never reports progress.
	maxLeaseTimeoutSeconds = 86400
	// maxExportInitMillis keeps a misconfigured spec from stalling a test run for long.
	maxExportInitMillis = 60000
)

// DiskSpec is one disk of a VMSpec.
type DiskSpec struct {
	// Bus is the controller kind: pvscsi, scsi (= lsilogic), lsilogic, lsilogicsas, buslogic, sata, nvme,
	// ide, or usb (not a real vSphere disk bus: a lab shape for the unsupported-controller rule).
	Bus string `json:"bus"`
	// Path is a VMDK on this machine; it is copied into the datastore as disk-N.vmdk.
	Path string `json:"path"`
	// BusNumber and UnitNumber place the disk explicitly; otherwise bus 0 and the next free unit.
	BusNumber  *int32 `json:"busNumber,omitempty"`
	UnitNumber *int32 `json:"unitNumber,omitempty"`
	// CapacityBytes overrides the capacity read from the VMDK header; with it the file may be anything.
	CapacityBytes int64 `json:"capacityBytes,omitempty"`
	// Mode is the backing's diskMode (default persistent), e.g. independent_persistent.
	Mode string `json:"mode,omitempty"`
	// Sharing is the backing's sharing (default sharingNone), e.g. sharingMultiWriter.
	Sharing string `json:"sharing,omitempty"`
	// RDM makes the disk a raw device mapping in this compatibility mode (physicalMode or
	// virtualMode): its backing is a mapping file for a LUN, as vSphere reports one.
	RDM string `json:"rdm,omitempty"`
}

// NICSpec is one network adapter of a VMSpec.
type NICSpec struct {
	Type    string `json:"type"`          // e1000, e1000e or vmxnet3
	Network string `json:"network"`       // standard port group or distributed port group name
	MAC     string `json:"mac,omitempty"` // manual MAC; empty lets vcsim generate one
}

// VMSpec is the body of POST /lab/vms and of `lab/vm create --spec`.
type VMSpec struct {
	Name           string `json:"name"`
	Folder         string `json:"folder,omitempty"` // below <datacenter>/vm, "/"-separated, created as needed
	Host           string `json:"host,omitempty"`   // default DC0_H0 (ESX mode: the one host)
	CPUs           int32  `json:"cpus,omitempty"`
	CoresPerSocket int32  `json:"coresPerSocket,omitempty"`
	MemoryMB       int64  `json:"memoryMB,omitempty"`
	Firmware       string `json:"firmware,omitempty"` // bios (default) or efi
	SecureBoot     bool   `json:"secureBoot,omitempty"`
	VTPM           bool   `json:"vtpm,omitempty"`
	GuestID        string `json:"guestId,omitempty"`
	HWVersion      string `json:"hwVersion,omitempty"` // vmx-NN
	Annotation     string `json:"annotation,omitempty"`
	Power          string `json:"power,omitempty"` // off (default) or on
	Tools          string `json:"tools,omitempty"` // running or notRunning; default running when on
	// LeaseTimeoutSeconds overrides -lease-timeout for this VM's export leases, so one test can watch a
	// lease expire in seconds while the shared lab keeps a long default.
	LeaseTimeoutSeconds int `json:"leaseTimeoutSeconds,omitempty"`
	// ExportInitMillis keeps this VM's new export leases "initializing" (no info) for that long, as a real
	// host does while it prepares the export; clients must poll until the state is ready.
	ExportInitMillis int `json:"exportInitMillis,omitempty"`
	// ExportNvram adds the VM's NVRAM file to its export leases as a disk=false device URL, as real
	// vCenter leases of EFI VMs do.
	ExportNvram bool       `json:"exportNvram,omitempty"`
	Disks       []DiskSpec `json:"disks,omitempty"`
	NICs        []NICSpec  `json:"nics,omitempty"`
	// Snapshot, when set, names a snapshot taken right after creation (before power-on).
	Snapshot string `json:"snapshot,omitempty"`
	// Encrypted sets config.keyId as an encrypted VM reports it (the disks stay plain files).
	Encrypted bool `json:"encrypted,omitempty"`
	// CdromISO adds a CD-ROM on IDE 1:1 holding this datastore path, e.g. "[LocalDS_0] iso/tools.iso".
	CdromISO string `json:"cdromIso,omitempty"`
}

// VMView is how GET /lab/vms reports a VM.
type VMView struct {
	Name          string     `json:"name"`
	MoID          string     `json:"moid"`
	InventoryPath string     `json:"inventoryPath"`
	PowerState    string     `json:"powerState"`
	ToolsRunning  string     `json:"toolsRunningStatus"`
	NumCPU        int32      `json:"numCPU"`
	CoresPerSock  int32      `json:"coresPerSocket"`
	MemoryMB      int32      `json:"memoryMB"`
	Firmware      string     `json:"firmware"`
	SecureBoot    bool       `json:"secureBoot"`
	TPM           bool       `json:"vtpm"`
	GuestID       string     `json:"guestId"`
	HWVersion     string     `json:"hwVersion"`
	Disks         []DiskView `json:"disks"`
	NICs          []NICView  `json:"nics"`
	// LeaseTimeoutSeconds is what this VM's export leases get (its own setting or the lab's).
	LeaseTimeoutSeconds int  `json:"leaseTimeoutSeconds"`
	ExportInitMillis    int  `json:"exportInitMillis"`
	ExportNvram         bool `json:"exportNvram"`
}

// DiskView is a VirtualDisk as the export lease will key it.
type DiskView struct {
	DeviceKey     int32  `json:"deviceKey"`
	Controller    string `json:"controller"` // e.g. ParaVirtualSCSIController
	BusNumber     int32  `json:"busNumber"`
	UnitNumber    int32  `json:"unitNumber"`
	ExportKey     string `json:"exportKey"` // /<moid>/<Controller><bus>:<unit>
	FileName      string `json:"fileName"`
	LocalPath     string `json:"localPath"`
	CapacityBytes int64  `json:"capacityBytes"`
}

// NICView is a network adapter with its backing resolved.
type NICView struct {
	Type         string `json:"type"`
	MAC          string `json:"mac"`
	AddressType  string `json:"addressType"`
	Network      string `json:"network"`
	SwitchUUID   string `json:"switchUuid,omitempty"`
	PortgroupKey string `json:"portgroupKey,omitempty"`
	// OpaqueNetworkID and OpaqueNetworkType are set for a NIC on an NSX opaque network.
	OpaqueNetworkID   string `json:"opaqueNetworkId,omitempty"`
	OpaqueNetworkType string `json:"opaqueNetworkType,omitempty"`
}

// specError is a bad request: the control API answers 400 with its text.
type specError struct{ msg string }

func (e *specError) Error() string { return e.msg }

func badSpec(format string, args ...any) error { return &specError{fmt.Sprintf(format, args...)} }

// conflictError is a request the inventory's current state refuses (409), e.g. deleting a leased VM.
type conflictError struct{ msg string }

func (e *conflictError) Error() string { return e.msg }

var (
	vmNameRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$`)
	folderPartRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9 ._-]{0,79}$`)
	hwVersionRE  = regexp.MustCompile(`^vmx-[0-9]{1,2}$`)
)

// controllerKind describes one --disk bus name.
type controllerKind struct {
	family string // scsi, sata, nvme, ide: the unit numbering space
	make   func(bus int32, key int32) types.BaseVirtualDevice
}

func scsiCtrl(c types.BaseVirtualSCSIController, bus, key int32) types.BaseVirtualDevice {
	s := c.GetVirtualSCSIController()
	s.BusNumber, s.Key, s.ControllerKey = bus, key, 100
	s.SharedBus = types.VirtualSCSISharingNoSharing
	s.ScsiCtlrUnitNumber = scsiReservedUnit
	return c.(types.BaseVirtualDevice)
}

var controllerKinds = map[string]controllerKind{
	"pvscsi": {"scsi", func(b, k int32) types.BaseVirtualDevice { return scsiCtrl(&types.ParaVirtualSCSIController{}, b, k) }},
	"scsi":   {"scsi", func(b, k int32) types.BaseVirtualDevice { return scsiCtrl(&types.VirtualLsiLogicController{}, b, k) }},
	"lsilogic": {"scsi", func(b, k int32) types.BaseVirtualDevice {
		return scsiCtrl(&types.VirtualLsiLogicController{}, b, k)
	}},
	"lsilogicsas": {"scsi", func(b, k int32) types.BaseVirtualDevice {
		return scsiCtrl(&types.VirtualLsiLogicSASController{}, b, k)
	}},
	"buslogic": {"scsi", func(b, k int32) types.BaseVirtualDevice { return scsiCtrl(&types.VirtualBusLogicController{}, b, k) }},
	"sata": {"sata", func(b, k int32) types.BaseVirtualDevice {
		c := &types.VirtualAHCIController{}
		c.BusNumber, c.Key, c.ControllerKey = b, k, 100
		return c
	}},
	"nvme": {"nvme", func(b, k int32) types.BaseVirtualDevice {
		c := &types.VirtualNVMEController{}
		c.BusNumber, c.Key, c.ControllerKey = b, k, 100
		return c
	}},
	"ide": {"ide", nil},
	// No real vSphere attaches a disk to USB; the lab does, to shape a disk on a controller KubeVirt
	// cannot boot from.
	"usb": {"usb", func(b, k int32) types.BaseVirtualDevice {
		c := &types.VirtualUSBXHCIController{}
		c.BusNumber, c.Key, c.ControllerKey = b, k, 100
		return c
	}},
}

func unitsOf(family string) int32 {
	switch family {
	case "scsi":
		return scsiUnits
	case "sata":
		return sataUnits
	case "nvme":
		return nvmeUnits
	default:
		return ideUnits
	}
}

// defaultIDEKey is the built-in IDE controller key of each bus (200, 201), as on every real VM.
func defaultIDEKey(bus int32) int32 { return 200 + bus }

// CreateVM validates spec, copies its disks into the datastore and creates the VM.
func (l *Lab) CreateVM(ctx context.Context, spec VMSpec) (VMView, error) {
	l.vmLock.Lock()
	defer l.vmLock.Unlock()
	if err := validateSpec(&spec, l.Host); err != nil {
		return VMView{}, err
	}
	if l.cfg.ESX && spec.Folder != "" {
		return VMView{}, badSpec("folder %q: a standalone ESXi has no VM folders", spec.Folder)
	}
	finder := find.NewFinder(l.client, false)
	dc, err := finder.Datacenter(ctx, l.Datacenter)
	if err != nil {
		return VMView{}, fmt.Errorf("find datacenter: %w", err)
	}
	finder.SetDatacenter(dc)
	host, err := finder.HostSystem(ctx, spec.Host)
	if err != nil {
		return VMView{}, badSpec("host %q: %v", spec.Host, err)
	}
	pool, err := host.ResourcePool(ctx)
	if err != nil {
		return VMView{}, fmt.Errorf("resource pool of %s: %w", spec.Host, err)
	}
	if _, err := finder.VirtualMachine(ctx, spec.Name); err == nil {
		return VMView{}, badSpec("a VM named %q already exists in %s", spec.Name, l.Datacenter)
	}
	var changes []types.BaseVirtualDeviceConfigSpec
	add := func(d types.BaseVirtualDevice) {
		changes = append(changes, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: d})
	}
	nics, opaque, err := l.nicDevices(ctx, finder, spec.NICs)
	if err != nil {
		return VMView{}, err
	}

	vmDir := filepath.Join(l.DatastoreRoot, spec.Name)
	if _, err := os.Stat(vmDir); err == nil {
		return VMView{}, badSpec("directory %q already exists on %s", spec.Name, defaultDatastore)
	}
	if err := os.Mkdir(vmDir, 0o700); err != nil {
		return VMView{}, fmt.Errorf("create VM directory: %w", err)
	}
	created := false
	defer func() {
		if !created {
			_ = os.RemoveAll(vmDir)
		}
	}()
	disks, ctrls, err := l.diskDevices(spec, vmDir)
	if err != nil {
		return VMView{}, err
	}
	for _, c := range ctrls {
		add(c)
	}
	for _, d := range disks {
		add(d)
	}
	for _, n := range nics {
		add(n)
	}
	if spec.VTPM {
		add(&types.VirtualTPM{VirtualDevice: types.VirtualDevice{Key: -900}})
	}
	if spec.CdromISO != "" {
		unit := int32(1)
		add(&types.VirtualCdrom{VirtualDevice: types.VirtualDevice{
			Key: -950, ControllerKey: defaultIDEKey(1), UnitNumber: &unit,
			Backing: &types.VirtualCdromIsoBackingInfo{
				VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: spec.CdromISO},
			},
		}})
	}

	cfg := types.VirtualMachineConfigSpec{
		Name:              spec.Name,
		GuestId:           spec.GuestID,
		Version:           spec.HWVersion,
		NumCPUs:           spec.CPUs,
		NumCoresPerSocket: types.NewInt32(spec.CoresPerSocket),
		MemoryMB:          spec.MemoryMB,
		Firmware:          spec.Firmware,
		Annotation:        spec.Annotation,
		Files:             &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s] %s/%s.vmx", defaultDatastore, spec.Name, spec.Name)},
		DeviceChange:      changes,
	}
	if spec.Firmware == "efi" {
		cfg.BootOptions = &types.VirtualMachineBootOptions{EfiSecureBootEnabled: types.NewBool(spec.SecureBoot)}
	}
	folder, err := l.ensureFolder(ctx, dc, spec.Folder)
	if err != nil {
		return VMView{}, err
	}
	task, err := folder.CreateVM(ctx, cfg, pool, host)
	if err != nil {
		return VMView{}, fmt.Errorf("CreateVM_Task: %w", err)
	}
	info, err := task.WaitForResult(ctx)
	if err != nil {
		return VMView{}, badSpec("CreateVM_Task failed: %v", err)
	}
	ref := info.Result.(types.ManagedObjectReference)
	created = true

	vmObj, ok := l.model.Map().Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return VMView{}, fmt.Errorf("created VM %s is not in the registry", ref)
	}
	toolsOn := spec.Tools == "running"
	l.mu.Lock()
	l.tools[ref.Value] = toolsOn
	l.exportOpts[ref.Value] = exportOptions{
		LeaseTimeout: time.Duration(spec.LeaseTimeoutSeconds) * time.Second,
		InitDelay:    time.Duration(spec.ExportInitMillis) * time.Millisecond,
		Nvram:        spec.ExportNvram,
	}
	l.mu.Unlock()
	lctx := l.lockCtx()
	lctx.WithLock(vmObj, func() {
		// mo.ApplyPropertyChange cannot set a *bool, and nothing waits on a VM this new: set it directly.
		vmObj.Summary.Config.TpmPresent = types.NewBool(spec.VTPM)
		if spec.Encrypted {
			vmObj.Config.KeyId = &types.CryptoKeyId{KeyId: "lab-key", ProviderId: &types.KeyProviderId{Id: "lab-kms"}}
		}
		attachOpaque(lctx, vmObj, opaque)
		lctx.Update(vmObj, append(toolsChanges(false),
			types.PropertyChange{Name: "guest.toolsVersionStatus2", Val: "guestToolsCurrent"}))
	})
	if spec.Snapshot != "" {
		vm := object.NewVirtualMachine(l.client, ref)
		t, err := vm.CreateSnapshot(ctx, spec.Snapshot, "", false, false)
		if err == nil {
			err = t.Wait(ctx)
		}
		if err != nil {
			return VMView{}, fmt.Errorf("snapshot %s: %w", spec.Name, err)
		}
	}
	if spec.Power == "on" {
		vm := object.NewVirtualMachine(l.client, ref)
		t, err := vm.PowerOn(ctx)
		if err == nil {
			err = t.Wait(ctx)
		}
		if err != nil {
			return VMView{}, fmt.Errorf("power on %s: %w", spec.Name, err)
		}
		if toolsOn {
			// PowerOn's tools update runs after the task; make the view we return already show it.
			lctx.WithLock(vmObj, func() { lctx.Update(vmObj, toolsChanges(true)) })
		}
	}
	return l.viewVM(ctx, ref)
}

func validateSpec(s *VMSpec, defaultHost string) error {
	if !vmNameRE.MatchString(s.Name) {
		return badSpec("name %q must match %s", s.Name, vmNameRE)
	}
	s.Folder = strings.Trim(s.Folder, "/")
	if s.Folder != "" {
		for _, part := range strings.Split(s.Folder, "/") {
			if !folderPartRE.MatchString(part) {
				return badSpec("folder component %q must match %s", part, folderPartRE)
			}
		}
	}
	if s.Host == "" {
		s.Host = defaultHost
	}
	if s.CPUs == 0 {
		s.CPUs = 1
	}
	if s.CoresPerSocket == 0 {
		s.CoresPerSocket = 1
	}
	if s.CPUs < 1 || s.CPUs > 768 || s.CoresPerSocket < 1 || s.CPUs%s.CoresPerSocket != 0 {
		return badSpec("cpus %d must be 1..768 and a multiple of coresPerSocket %d", s.CPUs, s.CoresPerSocket)
	}
	if s.MemoryMB == 0 {
		s.MemoryMB = 1024
	}
	if s.MemoryMB < 4 || s.MemoryMB > 24<<20 || s.MemoryMB%4 != 0 {
		return badSpec("memoryMB %d must be a multiple of 4 between 4 and %d", s.MemoryMB, 24<<20)
	}
	switch s.Firmware {
	case "":
		s.Firmware = "bios"
	case "bios", "efi":
	default:
		return badSpec("firmware %q must be bios or efi", s.Firmware)
	}
	if s.Firmware != "efi" && (s.SecureBoot || s.VTPM) {
		return badSpec("secureBoot and vtpm need firmware efi, as on vSphere")
	}
	if s.GuestID == "" {
		s.GuestID = "otherGuest64"
	}
	if s.HWVersion == "" {
		s.HWVersion = "vmx-19"
	}
	if !hwVersionRE.MatchString(s.HWVersion) {
		return badSpec("hwVersion %q must look like vmx-19", s.HWVersion)
	}
	switch s.Power {
	case "":
		s.Power = "off"
	case "on", "off":
	default:
		return badSpec("power %q must be on or off", s.Power)
	}
	switch s.Tools {
	case "":
		s.Tools = "notRunning"
		if s.Power == "on" {
			s.Tools = "running"
		}
	case "running", "notRunning":
	default:
		return badSpec("tools %q must be running or notRunning", s.Tools)
	}
	if s.Tools == "running" && s.Power != "on" {
		return badSpec("tools can only be running on a powered-on VM (power %q)", s.Power)
	}
	if s.LeaseTimeoutSeconds < 0 || s.LeaseTimeoutSeconds > maxLeaseTimeoutSeconds {
		return badSpec("leaseTimeoutSeconds %d must be 0 (lab default) or 1..%d", s.LeaseTimeoutSeconds, maxLeaseTimeoutSeconds)
	}
	if s.ExportInitMillis < 0 || s.ExportInitMillis > maxExportInitMillis {
		return badSpec("exportInitMillis %d must be 0..%d", s.ExportInitMillis, maxExportInitMillis)
	}
	if len(s.Disks) > maxDisks {
		return badSpec("%d disks is more than the lab's limit of %d", len(s.Disks), maxDisks)
	}
	if len(s.NICs) > maxNICs {
		return badSpec("%d NICs is more than vSphere's limit of %d", len(s.NICs), maxNICs)
	}
	return nil
}

// diskDevices copies each image to <vmDir>/disk-N.vmdk and builds controllers and disks for it.
func (l *Lab) diskDevices(spec VMSpec, vmDir string) ([]types.BaseVirtualDevice, []types.BaseVirtualDevice, error) {
	type busID struct {
		family string
		bus    int32
	}
	type busState struct {
		kind string
		key  int32
		used map[int32]bool
	}
	buses := map[busID]*busState{}
	var ctrls, disks []types.BaseVirtualDevice
	nextKey := int32(-100)

	for i, d := range spec.Disks {
		where := fmt.Sprintf("disks[%d]", i)
		kind, ok := controllerKinds[d.Bus]
		if !ok {
			return nil, nil, badSpec("%s: bus %q must be one of pvscsi, scsi, lsilogic, lsilogicsas, buslogic, sata, nvme, ide", where, d.Bus)
		}
		if d.Path == "" {
			return nil, nil, badSpec("%s: path is required", where)
		}
		limitBuses := int32(maxControllersPerKind)
		if kind.family == "ide" {
			limitBuses = maxIDEBuses
		}
		bus := int32(0)
		if d.BusNumber != nil {
			bus = *d.BusNumber
		}
		// With no explicit bus, move on to the next bus of the family once one is full.
		for {
			if bus < 0 || bus >= limitBuses {
				return nil, nil, badSpec("%s: bus number %d is outside 0..%d for %s", where, bus, limitBuses-1, kind.family)
			}
			st := buses[busID{kind.family, bus}]
			if d.BusNumber != nil || st == nil || int32(len(st.used)) < freeUnits(kind.family) {
				break
			}
			bus++
		}
		id := busID{kind.family, bus}
		st := buses[id]
		if st == nil {
			st = &busState{kind: d.Bus, used: map[int32]bool{}}
			if kind.make == nil {
				st.key = defaultIDEKey(bus)
			} else {
				st.key = nextKey
				nextKey--
				ctrls = append(ctrls, kind.make(bus, st.key))
			}
			buses[id] = st
		} else if controllerKinds[st.kind].make != nil && kind.make != nil &&
			reflect.TypeOf(controllerKinds[st.kind].make(0, 0)) != reflect.TypeOf(kind.make(0, 0)) {
			return nil, nil, badSpec("%s: %s bus %d already has a %s controller", where, kind.family, bus, st.kind)
		}
		var unit int32
		if d.UnitNumber != nil {
			unit = *d.UnitNumber
			if unit < 0 || unit >= unitsOf(kind.family) || (kind.family == "scsi" && unit == scsiReservedUnit) {
				return nil, nil, badSpec("%s: unit number %d is not usable on %s", where, unit, kind.family)
			}
			if st.used[unit] {
				return nil, nil, badSpec("%s: %s %d:%d is taken by another disk", where, kind.family, bus, unit)
			}
		} else {
			for st.used[unit] || (kind.family == "scsi" && unit == scsiReservedUnit) {
				unit++
			}
			if unit >= unitsOf(kind.family) {
				return nil, nil, badSpec("%s: %s bus %d has no free unit", where, kind.family, bus)
			}
		}
		st.used[unit] = true

		capacity := d.CapacityBytes
		var extents []string
		if capacity < 0 {
			return nil, nil, badSpec("%s: capacityBytes %d is negative", where, capacity)
		}
		if capacity == 0 {
			info, err := inspectVMDK(d.Path)
			if err != nil {
				return nil, nil, badSpec("%s: %v", where, err)
			}
			capacity, extents = info.CapacityBytes, info.Extents
		}
		name := fmt.Sprintf("disk-%d.vmdk", i)
		if err := copyFile(d.Path, filepath.Join(vmDir, name)); err != nil {
			return nil, nil, badSpec("%s: %v", where, err)
		}
		for _, e := range extents {
			if err := copyFile(filepath.Join(filepath.Dir(d.Path), e), filepath.Join(vmDir, e)); err != nil {
				return nil, nil, badSpec("%s: extent of descriptor: %v", where, err)
			}
		}
		u := unit
		file := types.VirtualDeviceFileBackingInfo{
			FileName: fmt.Sprintf("[%s] %s/%s", defaultDatastore, spec.Name, name),
		}
		var backing types.BaseVirtualDeviceBackingInfo = &types.VirtualDiskFlatVer2BackingInfo{
			VirtualDeviceFileBackingInfo: file,
			DiskMode:                     diskMode(d.Mode),
			ThinProvisioned:              types.NewBool(true),
			Sharing:                      d.Sharing,
		}
		switch d.RDM {
		case "":
		case "physicalMode", "virtualMode":
			backing = &types.VirtualDiskRawDiskMappingVer1BackingInfo{
				VirtualDeviceFileBackingInfo: file,
				CompatibilityMode:            d.RDM,
				DiskMode:                     diskMode(d.Mode),
				DeviceName:                   fmt.Sprintf("/vmfs/devices/disks/naa.600a0980383030%010d", i),
				LunUuid:                      fmt.Sprintf("0200000000600a0980383030%010d", i),
				Sharing:                      d.Sharing,
			}
		default:
			return nil, nil, badSpec("%s: rdm %q is not physicalMode or virtualMode", where, d.RDM)
		}
		disk := &types.VirtualDisk{
			VirtualDevice: types.VirtualDevice{
				Key:           nextKey,
				ControllerKey: st.key,
				UnitNumber:    &u,
				Backing:       backing,
			},
			CapacityInBytes: capacity,
			CapacityInKB:    capacity / 1024,
		}
		nextKey--
		disks = append(disks, disk)
	}
	return disks, ctrls, nil
}

// diskMode is the backing's diskMode for a spec value (default persistent).
func diskMode(mode string) string {
	if mode == "" {
		return string(types.VirtualDiskModePersistent)
	}
	return mode
}

func freeUnits(family string) int32 {
	if family == "scsi" {
		return scsiUnits - 1
	}
	return unitsOf(family)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open %s: %w", src, err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", dst, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Close()
}

// opaqueNIC is a NIC of a VM being created that belongs on an NSX opaque network (see attachOpaque).
type opaqueNIC struct {
	index   int // among the VM's ethernet cards, which keep the order of VMSpec.NICs
	backing *types.VirtualEthernetCardOpaqueNetworkBackingInfo
	network types.ManagedObjectReference
}

// placeholderNetwork is a standard port group both models have; opaque NICs are created on it first.
const placeholderNetwork = "VM Network"

// nicDevices resolves each NIC's network: a DistributedVirtualPortgroup gets a DVS port backing with the
// switch UUID and portgroup key (as a real vCenter reports it), a standard Network a network backing, and
// an OpaqueNetwork a placeholder backing that attachOpaque replaces once the VM exists.
func (l *Lab) nicDevices(ctx context.Context, finder *find.Finder, specs []NICSpec) ([]types.BaseVirtualDevice, []opaqueNIC, error) {
	var out []types.BaseVirtualDevice
	var opaque []opaqueNIC
	for i, n := range specs {
		where := fmt.Sprintf("nics[%d]", i)
		if n.Network == "" {
			return nil, nil, badSpec("%s: network is required", where)
		}
		nets, err := finder.NetworkList(ctx, n.Network)
		if err != nil || len(nets) != 1 {
			return nil, nil, badSpec("%s: network %q not found in %s (see GET /lab/networks)", where, n.Network, l.Datacenter)
		}
		var backing types.BaseVirtualDeviceBackingInfo
		switch nw := nets[0].(type) {
		case *object.DistributedVirtualPortgroup:
			var pg mo.DistributedVirtualPortgroup
			if err := nw.Properties(ctx, nw.Reference(), []string{"key", "config.distributedVirtualSwitch"}, &pg); err != nil {
				return nil, nil, fmt.Errorf("%s: read port group %s: %w", where, n.Network, err)
			}
			var dvs mo.DistributedVirtualSwitch
			pc := property.DefaultCollector(l.client)
			if err := pc.RetrieveOne(ctx, *pg.Config.DistributedVirtualSwitch, []string{"uuid"}, &dvs); err != nil {
				return nil, nil, fmt.Errorf("%s: read switch of %s: %w", where, n.Network, err)
			}
			backing = &types.VirtualEthernetCardDistributedVirtualPortBackingInfo{
				Port: types.DistributedVirtualSwitchPortConnection{SwitchUuid: dvs.Uuid, PortgroupKey: pg.Key},
			}
		case *object.Network:
			backing = &types.VirtualEthernetCardNetworkBackingInfo{
				VirtualDeviceDeviceBackingInfo: types.VirtualDeviceDeviceBackingInfo{DeviceName: n.Network},
			}
		case *object.OpaqueNetwork:
			var on mo.OpaqueNetwork
			if err := nw.Properties(ctx, nw.Reference(), []string{"summary"}, &on); err != nil {
				return nil, nil, fmt.Errorf("%s: read opaque network %s: %w", where, n.Network, err)
			}
			sum, ok := on.Summary.(*types.OpaqueNetworkSummary)
			if !ok {
				return nil, nil, fmt.Errorf("%s: opaque network %s has no opaque summary", where, n.Network)
			}
			opaque = append(opaque, opaqueNIC{index: i, network: nw.Reference(), backing: &types.VirtualEthernetCardOpaqueNetworkBackingInfo{
				OpaqueNetworkId: sum.OpaqueNetworkId, OpaqueNetworkType: sum.OpaqueNetworkType,
			}})
			backing = &types.VirtualEthernetCardNetworkBackingInfo{
				VirtualDeviceDeviceBackingInfo: types.VirtualDeviceDeviceBackingInfo{DeviceName: placeholderNetwork},
			}
		default:
			return nil, nil, badSpec("%s: network %q is a %T, not a standard, distributed or opaque network", where, n.Network, nets[0])
		}
		card := types.VirtualEthernetCard{
			VirtualDevice: types.VirtualDevice{Key: int32(-500 - i), Backing: backing},
			AddressType:   string(types.VirtualEthernetCardMacTypeGenerated),
		}
		if n.MAC != "" {
			mac, err := net.ParseMAC(n.MAC)
			if err != nil || len(mac) != 6 {
				return nil, nil, badSpec("%s: mac %q is not a 6-byte MAC address", where, n.MAC)
			}
			card.MacAddress = mac.String()
			card.AddressType = string(types.VirtualEthernetCardMacTypeManual)
		}
		switch n.Type {
		case "e1000":
			out = append(out, &types.VirtualE1000{VirtualEthernetCard: card})
		case "e1000e":
			out = append(out, &types.VirtualE1000e{VirtualEthernetCard: card})
		case "vmxnet3":
			out = append(out, &types.VirtualVmxnet3{VirtualVmxnet: types.VirtualVmxnet{VirtualEthernetCard: card}})
		default:
			return nil, nil, badSpec("%s: type %q must be e1000, e1000e or vmxnet3", where, n.Type)
		}
	}
	return out, opaque, nil
}

// attachOpaque gives NICs on opaque networks the backing an ESXi on an NSX N-VDS reports
// (VirtualEthernetCardOpaqueNetworkBackingInfo with the network's id and type) and lists those networks in
// the VM's "network". vcsim's reconfigure cannot be used for that: it turns an nsx.LogicalSwitch backing
// into a DVS port of a matching NSX port group, which is what a VDS 7 does, not an N-VDS. Nothing waits on
// a VM this new, so its devices are changed in place under its lock.
func attachOpaque(ctx *simulator.Context, vm *simulator.VirtualMachine, opaque []opaqueNIC) {
	if len(opaque) == 0 {
		return
	}
	var cards []*types.VirtualEthernetCard
	for _, d := range vm.Config.Hardware.Device {
		if c, ok := d.(types.BaseVirtualEthernetCard); ok {
			cards = append(cards, c.GetVirtualEthernetCard())
		}
	}
	onOpaque := map[int32]types.ManagedObjectReference{}
	for _, o := range opaque {
		if o.index < len(cards) {
			cards[o.index].Backing = o.backing
			onOpaque[cards[o.index].Key] = o.network
		}
	}
	var nets []types.ManagedObjectReference
	for _, c := range cards {
		ref, ok := onOpaque[c.Key]
		if !ok {
			switch b := c.Backing.(type) {
			case *types.VirtualEthernetCardNetworkBackingInfo:
				if b.Network != nil {
					ref, ok = *b.Network, true
				}
			case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
				ref, ok = types.ManagedObjectReference{Type: "DistributedVirtualPortgroup", Value: b.Port.PortgroupKey}, true
			}
		}
		if ok && !slices.Contains(nets, ref) {
			nets = append(nets, ref)
		}
	}
	for i := range vm.Guest.Net {
		if ref, ok := onOpaque[vm.Guest.Net[i].DeviceConfigId]; ok {
			if e, ok := ctx.Map.Get(ref).(mo.Entity); ok {
				vm.Guest.Net[i].Network = e.Entity().Name
			}
		}
	}
	ctx.Update(vm, []types.PropertyChange{{Name: "network", Val: nets}})
}

// ensureFolder returns <datacenter>/vm/<folder>, creating missing levels.
func (l *Lab) ensureFolder(ctx context.Context, dc *object.Datacenter, folder string) (*object.Folder, error) {
	dcFolders, err := dc.Folders(ctx)
	if err != nil {
		return nil, fmt.Errorf("datacenter folders: %w", err)
	}
	cur := dcFolders.VmFolder
	if folder == "" {
		return cur, nil
	}
	si := object.NewSearchIndex(l.client)
	p := dcFolders.VmFolder.InventoryPath
	if p == "" {
		p = "/" + l.Datacenter + "/vm"
	}
	for _, part := range strings.Split(folder, "/") {
		p = path.Join(p, part)
		ref, err := si.FindByInventoryPath(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("look up folder %s: %w", p, err)
		}
		if ref != nil {
			f, ok := ref.(*object.Folder)
			if !ok {
				return nil, badSpec("folder %s exists but is a %T", p, ref)
			}
			cur = f
			continue
		}
		cur, err = cur.CreateFolder(ctx, part)
		if err != nil {
			return nil, fmt.Errorf("create folder %s: %w", p, err)
		}
	}
	return cur, nil
}

// findVM returns the VM with the given name anywhere in the lab's datacenter.
func (l *Lab) findVM(ctx context.Context, name string) (*object.VirtualMachine, error) {
	finder := find.NewFinder(l.client, false)
	dc, err := finder.Datacenter(ctx, l.Datacenter)
	if err != nil {
		return nil, err
	}
	finder.SetDatacenter(dc)
	vm, err := finder.VirtualMachine(ctx, name)
	if err != nil {
		var nf *find.NotFoundError
		if errors.As(err, &nf) {
			return nil, errNotFound
		}
		return nil, err
	}
	return vm, nil
}

var errNotFound = errors.New("not found")

// ListVMs reports every VM in the inventory, sorted by inventory path.
func (l *Lab) ListVMs(ctx context.Context) ([]VMView, error) {
	m := view.NewManager(l.client)
	v, err := m.CreateContainerView(ctx, l.client.ServiceContent.RootFolder, []string{"VirtualMachine"}, true)
	if err != nil {
		return nil, fmt.Errorf("container view: %w", err)
	}
	defer func() { _ = v.Destroy(context.Background()) }()
	refs, err := v.Find(ctx, []string{"VirtualMachine"}, nil)
	if err != nil {
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	out := make([]VMView, 0, len(refs))
	for _, ref := range refs {
		vm, err := l.viewVM(ctx, ref)
		if err != nil {
			return nil, err
		}
		out = append(out, vm)
	}
	slices.SortFunc(out, func(a, b VMView) int { return strings.Compare(a.InventoryPath, b.InventoryPath) })
	return out, nil
}

// viewVM reads a VM through the property collector, as a client would see it.
func (l *Lab) viewVM(ctx context.Context, ref types.ManagedObjectReference) (VMView, error) {
	var vm mo.VirtualMachine
	pc := property.DefaultCollector(l.client)
	if err := pc.RetrieveOne(ctx, ref, []string{"name", "config", "runtime.powerState", "guest.toolsRunningStatus", "summary.config.tpmPresent"}, &vm); err != nil {
		return VMView{}, fmt.Errorf("read %s: %w", ref, err)
	}
	elems, err := l.inventoryPath(ctx, ref)
	if err != nil {
		return VMView{}, err
	}
	v := VMView{Name: vm.Name, MoID: ref.Value, InventoryPath: elems, PowerState: string(vm.Runtime.PowerState), Disks: []DiskView{}, NICs: []NICView{}}
	if vm.Guest != nil {
		v.ToolsRunning = vm.Guest.ToolsRunningStatus
	}
	l.mu.Lock()
	opts := l.exportOpts[ref.Value]
	l.mu.Unlock()
	v.LeaseTimeoutSeconds, v.ExportInitMillis = int(l.cfg.LeaseTimeout/time.Second), int(opts.InitDelay/time.Millisecond)
	v.ExportNvram = opts.Nvram
	if opts.LeaseTimeout > 0 {
		v.LeaseTimeoutSeconds = int(opts.LeaseTimeout / time.Second)
	}
	if vm.Summary.Config.TpmPresent != nil {
		v.TPM = *vm.Summary.Config.TpmPresent
	}
	if c := vm.Config; c != nil {
		v.NumCPU, v.MemoryMB, v.Firmware, v.GuestID, v.HWVersion = c.Hardware.NumCPU, c.Hardware.MemoryMB, c.Firmware, c.GuestId, c.Version
		if c.Hardware.NumCoresPerSocket != nil {
			v.CoresPerSock = *c.Hardware.NumCoresPerSocket
		}
		if c.BootOptions != nil && c.BootOptions.EfiSecureBootEnabled != nil {
			v.SecureBoot = *c.BootOptions.EfiSecureBootEnabled
		}
		devices := object.VirtualDeviceList(c.Hardware.Device)
		for _, d := range devices {
			switch dev := d.(type) {
			case *types.VirtualDisk:
				dv := DiskView{DeviceKey: dev.Key, CapacityBytes: dev.CapacityInBytes}
				if ctrl, ok := devices.FindByKey(dev.ControllerKey).(types.BaseVirtualController); ok && dev.UnitNumber != nil {
					dv.Controller = reflect.TypeOf(ctrl).Elem().Name()
					dv.BusNumber = ctrl.GetVirtualController().BusNumber
					dv.UnitNumber = *dev.UnitNumber
					dv.ExportKey = fmt.Sprintf("/%s/%s%d:%d", ref.Value, dv.Controller, dv.BusNumber, dv.UnitNumber)
				}
				if b, ok := dev.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
					dv.FileName = b.GetVirtualDeviceFileBackingInfo().FileName
					dv.LocalPath, _ = l.resolveDatastorePath(dv.FileName)
				}
				v.Disks = append(v.Disks, dv)
			case types.BaseVirtualEthernetCard:
				card := dev.GetVirtualEthernetCard()
				nv := NICView{MAC: card.MacAddress, AddressType: card.AddressType,
					Type: strings.ToLower(strings.TrimPrefix(reflect.TypeOf(d).Elem().Name(), "Virtual"))}
				switch b := card.Backing.(type) {
				case *types.VirtualEthernetCardNetworkBackingInfo:
					nv.Network = b.DeviceName
				case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
					nv.SwitchUUID, nv.PortgroupKey = b.Port.SwitchUuid, b.Port.PortgroupKey
					if pg, ok := l.model.Map().Get(types.ManagedObjectReference{Type: "DistributedVirtualPortgroup", Value: b.Port.PortgroupKey}).(*simulator.DistributedVirtualPortgroup); ok {
						nv.Network = pg.Name
					}
				case *types.VirtualEthernetCardOpaqueNetworkBackingInfo:
					nv.OpaqueNetworkID, nv.OpaqueNetworkType = b.OpaqueNetworkId, b.OpaqueNetworkType
					for _, e := range l.model.Map().All("OpaqueNetwork") {
						if on, ok := e.(*mo.OpaqueNetwork); ok && on.Summary != nil {
							if sum, ok := on.Summary.(*types.OpaqueNetworkSummary); ok && sum.OpaqueNetworkId == b.OpaqueNetworkId {
								nv.Network = on.Name
							}
						}
					}
				}
				v.NICs = append(v.NICs, nv)
			}
		}
	}
	return v, nil
}

// inventoryPath walks parents up to the root folder: "/DC0/vm/a/b/web01".
func (l *Lab) inventoryPath(ctx context.Context, ref types.ManagedObjectReference) (string, error) {
	pc := property.DefaultCollector(l.client)
	var parts []string
	cur := ref
	for range 64 { // inventory depth bound: real trees are far shallower
		var e mo.ManagedEntity
		if err := pc.RetrieveOne(ctx, cur, []string{"name", "parent"}, &e); err != nil {
			return "", fmt.Errorf("read %s: %w", cur, err)
		}
		if e.Parent == nil {
			return "/" + strings.Join(parts, "/"), nil
		}
		parts = append([]string{e.Name}, parts...)
		cur = *e.Parent
	}
	return "", fmt.Errorf("inventory path of %s is deeper than 64", ref)
}

// DeleteVM powers a VM off, destroys it and removes its directory.
func (l *Lab) DeleteVM(ctx context.Context, name string) error {
	l.vmLock.Lock()
	defer l.vmLock.Unlock()
	vm, err := l.findVM(ctx, name)
	if err != nil {
		return err
	}
	state, err := vm.PowerState(ctx)
	if err != nil {
		return err
	}
	if state == types.VirtualMachinePowerStatePoweredOn {
		t, err := vm.PowerOff(ctx)
		if err == nil {
			err = t.Wait(ctx)
		}
		if err != nil {
			return fmt.Errorf("power off %s: %w", name, err)
		}
	}
	t, err := vm.Destroy(ctx)
	if err == nil {
		err = t.Wait(ctx)
	}
	if err != nil {
		if fault.Is(err, &types.InvalidState{}) {
			return &conflictError{fmt.Sprintf("destroy %s: %v", name, err)}
		}
		return fmt.Errorf("destroy %s: %w", name, err)
	}
	l.mu.Lock()
	delete(l.tools, vm.Reference().Value)
	delete(l.exportOpts, vm.Reference().Value)
	l.mu.Unlock()
	if err := os.RemoveAll(filepath.Join(l.DatastoreRoot, name)); err != nil {
		return fmt.Errorf("remove directory of %s: %w", name, err)
	}
	return nil
}

// NetworkSpec is the body of POST /lab/networks.
type NetworkSpec struct {
	Name   string `json:"name"`
	Kind   string `json:"kind"`             // standard or distributed
	VLAN   int32  `json:"vlan,omitempty"`   // 0..4094
	Switch string `json:"switch,omitempty"` // distributed only; default DVS0
	// OpaqueNetworkID and OpaqueNetworkType describe an opaque network (kind "opaque"); defaults: a random
	// UUID and nsx.LogicalSwitch, as NSX-T reports its segments.
	OpaqueNetworkID   string `json:"opaqueNetworkId,omitempty"`
	OpaqueNetworkType string `json:"opaqueNetworkType,omitempty"`
}

// NetworkView is how GET /lab/networks reports a network.
type NetworkView struct {
	Name         string `json:"name"`
	Kind         string `json:"kind"`
	MoID         string `json:"moid"`
	PortgroupKey string `json:"portgroupKey,omitempty"`
	SwitchUUID   string `json:"switchUuid,omitempty"`
	// Set for kind "opaque".
	OpaqueNetworkID   string `json:"opaqueNetworkId,omitempty"`
	OpaqueNetworkType string `json:"opaqueNetworkType,omitempty"`
}

// CreateNetwork adds a standard port group on the default host's vSwitch0, a distributed port group on a
// DVS, or an NSX opaque network.
func (l *Lab) CreateNetwork(ctx context.Context, spec NetworkSpec) (NetworkView, error) {
	l.vmLock.Lock()
	defer l.vmLock.Unlock()
	if !folderPartRE.MatchString(spec.Name) {
		return NetworkView{}, badSpec("name %q must match %s", spec.Name, folderPartRE)
	}
	if spec.VLAN < 0 || spec.VLAN > 4094 {
		return NetworkView{}, badSpec("vlan %d is outside 0..4094", spec.VLAN)
	}
	finder := find.NewFinder(l.client, false)
	dc, err := finder.Datacenter(ctx, l.Datacenter)
	if err != nil {
		return NetworkView{}, err
	}
	finder.SetDatacenter(dc)
	if _, err := finder.Network(ctx, spec.Name); err == nil {
		return NetworkView{}, badSpec("a network named %q already exists", spec.Name)
	}
	if spec.Kind != "opaque" && (spec.OpaqueNetworkID != "" || spec.OpaqueNetworkType != "") {
		return NetworkView{}, badSpec("opaqueNetworkId and opaqueNetworkType are for kind opaque only")
	}
	switch spec.Kind {
	case "standard", "":
		host, err := finder.HostSystem(ctx, l.Host)
		if err != nil {
			return NetworkView{}, err
		}
		ns, err := host.ConfigManager().NetworkSystem(ctx)
		if err != nil {
			return NetworkView{}, err
		}
		if err := ns.AddPortGroup(ctx, types.HostPortGroupSpec{Name: spec.Name, VlanId: spec.VLAN, VswitchName: "vSwitch0"}); err != nil {
			return NetworkView{}, fmt.Errorf("AddPortGroup: %w", err)
		}
	case "distributed":
		if spec.Switch == "" {
			spec.Switch = "DVS0"
		}
		n, err := finder.Network(ctx, spec.Switch)
		if err != nil {
			return NetworkView{}, badSpec("switch %q not found", spec.Switch)
		}
		dvs, ok := n.(*object.DistributedVirtualSwitch)
		if !ok {
			return NetworkView{}, badSpec("%q is not a distributed switch", spec.Switch)
		}
		t, err := dvs.AddPortgroup(ctx, []types.DVPortgroupConfigSpec{{
			Name: spec.Name, Type: string(types.DistributedVirtualPortgroupPortgroupTypeEarlyBinding), NumPorts: 128,
			DefaultPortConfig: &types.VMwareDVSPortSetting{Vlan: &types.VmwareDistributedVirtualSwitchVlanIdSpec{VlanId: spec.VLAN}},
		}})
		if err == nil {
			err = t.Wait(ctx)
		}
		if err != nil {
			return NetworkView{}, fmt.Errorf("AddDVPortgroup_Task: %w", err)
		}
	case "opaque":
		// Opaque networks come from NSX, not from a vSphere API call: put one straight into the model.
		if spec.VLAN != 0 || spec.Switch != "" {
			return NetworkView{}, badSpec("vlan and switch do not apply to an opaque network")
		}
		dcObj, ok := l.model.Map().Get(dc.Reference()).(*simulator.Datacenter)
		if !ok {
			return NetworkView{}, fmt.Errorf("datacenter %s is not in the registry", l.Datacenter)
		}
		folder, ok := l.model.Map().Get(dcObj.NetworkFolder).(*simulator.Folder)
		if !ok {
			return NetworkView{}, fmt.Errorf("network folder of %s is not in the registry", l.Datacenter)
		}
		summary := types.OpaqueNetworkSummary{
			NetworkSummary:  types.NetworkSummary{Name: spec.Name},
			OpaqueNetworkId: spec.OpaqueNetworkID, OpaqueNetworkType: spec.OpaqueNetworkType,
		}
		lctx := l.lockCtx()
		lctx.WithLock(folder, func() { err = folder.AddOpaqueNetwork(lctx, summary) })
		if err != nil {
			return NetworkView{}, fmt.Errorf("add opaque network: %w", err)
		}
	default:
		return NetworkView{}, badSpec("kind %q must be standard, distributed or opaque", spec.Kind)
	}
	nets, err := l.ListNetworks(ctx)
	if err != nil {
		return NetworkView{}, err
	}
	for _, n := range nets {
		if n.Name == spec.Name {
			return n, nil
		}
	}
	return NetworkView{}, fmt.Errorf("network %s was created but is not listed", spec.Name)
}

// ListNetworks reports the lab's port groups and opaque networks.
func (l *Lab) ListNetworks(ctx context.Context) ([]NetworkView, error) {
	out := []NetworkView{}
	for _, e := range l.model.Map().All("Network") {
		out = append(out, NetworkView{Name: e.Entity().Name, Kind: "standard", MoID: e.Reference().Value})
	}
	for _, e := range l.model.Map().All("DistributedVirtualPortgroup") {
		pg, ok := e.(*simulator.DistributedVirtualPortgroup)
		if !ok {
			continue
		}
		var pgm mo.DistributedVirtualPortgroup
		if err := property.DefaultCollector(l.client).RetrieveOne(ctx, pg.Self, []string{"name", "key", "config.distributedVirtualSwitch"}, &pgm); err != nil {
			return nil, err
		}
		v := NetworkView{Name: pgm.Name, Kind: "distributed", MoID: pg.Self.Value, PortgroupKey: pgm.Key}
		if sw := pgm.Config.DistributedVirtualSwitch; sw != nil {
			var dvs mo.DistributedVirtualSwitch
			if err := property.DefaultCollector(l.client).RetrieveOne(ctx, *sw, []string{"uuid"}, &dvs); err == nil {
				v.SwitchUUID = dvs.Uuid
			}
		}
		out = append(out, v)
	}
	for _, e := range l.model.Map().All("OpaqueNetwork") {
		on, ok := e.(*mo.OpaqueNetwork)
		if !ok {
			continue
		}
		v := NetworkView{Name: on.Name, Kind: "opaque", MoID: on.Self.Value}
		if sum, ok := on.Summary.(*types.OpaqueNetworkSummary); ok {
			v.OpaqueNetworkID, v.OpaqueNetworkType = sum.OpaqueNetworkId, sum.OpaqueNetworkType
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b NetworkView) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// RenameHost gives a host a new inventory name, e.g. an address a preflight probe can reach (or
// fail to reach) the way it would reach a real ESXi host by its name.
func (l *Lab) RenameHost(ctx context.Context, name, newName string) error {
	if newName == "" {
		return badSpec("name must not be empty")
	}
	l.vmLock.Lock()
	defer l.vmLock.Unlock()
	finder := find.NewFinder(l.client, false)
	dc, err := finder.Datacenter(ctx, l.Datacenter)
	if err != nil {
		return fmt.Errorf("find datacenter: %w", err)
	}
	finder.SetDatacenter(dc)
	host, err := finder.HostSystem(ctx, name)
	if err != nil {
		return badSpec("host %q: %v", name, err)
	}
	obj := l.model.Map().Get(host.Reference())
	if obj == nil {
		return fmt.Errorf("host %s is not in the registry", host.Reference())
	}
	lctx := l.lockCtx()
	lctx.WithLock(obj, func() {
		lctx.Update(obj, []types.PropertyChange{{Name: "name", Val: newName}})
	})
	return nil
}
