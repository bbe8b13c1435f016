// VirtualMachine.ExportVm and the HttpNfcLease it returns, shaped like a real vCenter's: one device URL
// per VirtualDisk keyed "/<vm>/<ControllerClass><bus>:<unit>", a lease that only HttpNfcLeaseProgress keeps
// alive, and disk URLs that serve the backing files byte for byte until the lease is completed, aborted or
// timed out. Every lease and every call on it is recorded for GET /lab/leases.
package main

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"reflect"
	"time"

	"github.com/google/uuid"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// copyChunk is the unit in which disk downloads are written, so a lease ending or an injected cut is
// noticed within one chunk.
const copyChunk = 64 << 10

// labVM overrides a few VirtualMachine methods; everything else reaches the simulator's VM unchanged.
type labVM struct {
	*simulator.VirtualMachine
	lab *Lab
}

// leaseFile is one disk behind a lease's URLs.
type leaseFile struct {
	TargetID string
	Key      string
	Path     string
	Capacity int64
	Disk     bool // false for the NVRAM entry
}

// exportLease is the HttpNfcLease managed object. The embedded mo.HttpNfcLease is what the property
// collector reads; it changes only under the simulator's object lock. Everything else is guarded by Lab.mu.
type exportLease struct {
	mo.HttpNfcLease
	lab    *Lab
	ticket string
	vm     types.ManagedObjectReference
	vmName string
	files  map[string]leaseFile // by targetId
	order  []string             // targetIds in device order

	timeout   time.Duration           // leaseTimeout: the lab's, or the VM's own (VMSpec.LeaseTimeoutSeconds)
	readyInfo *types.HttpNfcLeaseInfo // info as published once the lease is ready

	created       time.Time
	lastProgress  time.Time
	state         types.HttpNfcLeaseState
	progressCalls int
	lastPercent   int32
	completed     bool
	aborted       bool
	abortFault    string
	expired       bool
	bytesServed   map[string]int64
	downloads     map[string]int
	cuts          int
	timer         *time.Timer
	done          chan struct{} // closed when the lease leaves the ready state: in-flight downloads stop
}

// ExportVm hands out a ready export lease for a powered-off VM.
func (vm *labVM) ExportVm(ctx *simulator.Context, req *types.ExportVm) soap.HasFault {
	body := &methods.ExportVmBody{}
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
		body.Fault_ = simulator.Fault(
			fmt.Sprintf("The attempted operation cannot be performed in the current state (%s).", vm.Runtime.PowerState),
			&types.InvalidPowerState{RequestedState: types.VirtualMachinePowerStatePoweredOff, ExistingState: vm.Runtime.PowerState})
		return body
	}
	l := vm.lab
	lease := &exportLease{
		lab:         l,
		ticket:      uuid.New().String(),
		vm:          vm.Self,
		vmName:      vm.Name,
		files:       map[string]leaseFile{},
		bytesServed: map[string]int64{},
		downloads:   map[string]int{},
		done:        make(chan struct{}),
	}
	sessionKey := "internal"
	if ctx.Session != nil {
		sessionKey = ctx.Session.Key
	}
	// Real lease morefs are session-scoped "session[<session>]<id>"; we keep the object in the global
	// registry so the recording, timers and other sessions can still see it after its session ends.
	lease.Self = types.ManagedObjectReference{Type: "HttpNfcLease", Value: fmt.Sprintf("session[%s]%s", sessionKey, uuid.New())}

	devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
	u := &url.URL{Scheme: "https", Host: l.SDKURL.Host}
	if l.cfg.NFCStarHost {
		u.Host = "*"
	}
	var urls []types.HttpNfcLeaseDeviceUrl
	var totalKB int64
	for _, d := range devices.SelectByType((*types.VirtualDisk)(nil)) {
		disk := d.(*types.VirtualDisk)
		backing, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
		if !ok {
			continue
		}
		ctrl, ok := devices.FindByKey(disk.ControllerKey).(types.BaseVirtualController)
		if !ok || disk.UnitNumber == nil {
			body.Fault_ = simulator.Fault(fmt.Sprintf("disk %d has no controller", disk.Key), &types.InvalidDeviceSpec{})
			return body
		}
		local, fault := l.resolveDatastorePath(backing.GetVirtualDeviceFileBackingInfo().FileName)
		if fault != nil {
			body.Fault_ = simulator.Fault("", fault)
			return body
		}
		class := reflect.TypeOf(ctrl).Elem().Name()
		bus := ctrl.GetVirtualController().BusNumber
		target := fmt.Sprintf("disk-%d.vmdk", len(urls))
		key := fmt.Sprintf("/%s/%s%d:%d", vm.Self.Value, class, bus, *disk.UnitNumber)
		u.Path = path.Join("/nfc", lease.ticket, target)
		urls = append(urls, types.HttpNfcLeaseDeviceUrl{
			Key:           key,
			ImportKey:     fmt.Sprintf("/%s/%s%d:%d", vm.Name, class, bus, *disk.UnitNumber),
			Url:           u.String(),
			SslThumbprint: l.thumbprint,
			Disk:          types.NewBool(true),
			TargetId:      target,
			FileSize:      0, // like vSAN/thin exports: the streamed size is not known up front
		})
		lease.files[target] = leaseFile{TargetID: target, Key: key, Path: local, Capacity: disk.CapacityInBytes, Disk: true}
		lease.order = append(lease.order, target)
		totalKB += disk.CapacityInBytes / 1024
	}

	l.mu.Lock()
	opts := l.exportOpts[vm.Self.Value]
	l.mu.Unlock()
	if opts.Nvram && vm.Config.Files.VmPathName != "" {
		// Real leases of EFI VMs also list the NVRAM file, with disk=false; clients must skip it.
		name := vm.Name + ".nvram"
		local, fault := l.resolveDatastorePath(path.Dir(vm.Config.Files.VmPathName) + "/" + name)
		if fault != nil {
			body.Fault_ = simulator.Fault("", fault)
			return body
		}
		key := fmt.Sprintf("/%s/nvram", vm.Self.Value)
		u.Path = path.Join("/nfc", lease.ticket, name)
		urls = append(urls, types.HttpNfcLeaseDeviceUrl{
			Key: key, ImportKey: fmt.Sprintf("/%s/nvram", vm.Name), Url: u.String(), SslThumbprint: l.thumbprint,
			Disk: types.NewBool(false), TargetId: name,
		})
		lease.files[name] = leaseFile{TargetID: name, Key: key, Path: local}
		lease.order = append(lease.order, name)
	}
	lease.timeout = l.cfg.LeaseTimeout
	if opts.LeaseTimeout > 0 {
		lease.timeout = opts.LeaseTimeout
	}
	lease.Mode = string(types.HttpNfcLeaseModePushOrGet)
	lease.Capabilities = types.HttpNfcLeaseCapabilities{PullModeSupported: true}
	lease.readyInfo = &types.HttpNfcLeaseInfo{
		Lease:                 lease.Self,
		Entity:                vm.Self,
		DeviceUrl:             urls,
		TotalDiskCapacityInKB: totalKB,
		LeaseTimeout:          int32(lease.timeout / time.Second),
	}
	now := time.Now()
	lease.created, lease.lastProgress = now, now
	if opts.InitDelay > 0 {
		// A real lease is "initializing" (no info yet) while the host prepares the export.
		lease.State, lease.state = types.HttpNfcLeaseStateInitializing, types.HttpNfcLeaseStateInitializing
	} else {
		lease.State, lease.state = types.HttpNfcLeaseStateReady, types.HttpNfcLeaseStateReady
		lease.InitializeProgress, lease.Info = 100, lease.readyInfo
	}

	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		body.Fault_ = simulator.Fault("lab is shutting down", &types.InvalidState{})
		return body
	}
	l.model.Map().Put(lease)
	l.leases = append(l.leases, lease)
	l.byTick[lease.ticket] = lease
	if opts.InitDelay > 0 {
		lease.timer = time.AfterFunc(opts.InitDelay, lease.becomeReady)
	} else {
		lease.timer = time.AfterFunc(lease.timeout, lease.checkExpiry)
	}
	l.mu.Unlock()

	body.Res = &types.ExportVmResponse{Returnval: lease.Self}
	return body
}

// ShutdownGuest needs running tools, as on a real host (vcsim would power off any VM). Like the real
// call it returns at once; the guest powers off shortly after, through the ordinary PowerOff path.
func (vm *labVM) ShutdownGuest(ctx *simulator.Context, req *types.ShutdownGuest) soap.HasFault {
	body := &methods.ShutdownGuestBody{}
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		body.Fault_ = simulator.Fault("", &types.InvalidPowerState{
			RequestedState: types.VirtualMachinePowerStatePoweredOn, ExistingState: vm.Runtime.PowerState})
		return body
	}
	if vm.Guest == nil || vm.Guest.ToolsRunningStatus != string(types.VirtualMachineToolsRunningStatusGuestToolsRunning) {
		body.Fault_ = simulator.Fault(
			"Cannot complete operation because VMware Tools is not running in this virtual machine.",
			&types.ToolsUnavailable{})
		return body
	}
	ref, l := vm.Self, vm.lab
	go func() {
		task, err := object.NewVirtualMachine(l.client, ref).PowerOff(context.Background())
		if err == nil {
			_ = task.Wait(context.Background())
		}
	}()
	body.Res = &types.ShutdownGuestResponse{}
	return body
}

// leaseHeld reports whether an export lease of the VM is still initializing or ready. Caller must not
// hold Lab.mu.
func (l *Lab) leaseHeld(vm types.ManagedObjectReference) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.leases {
		if e.vm == vm && (e.state == types.HttpNfcLeaseStateReady || e.state == types.HttpNfcLeaseStateInitializing) {
			return e.Self.Value, true
		}
	}
	return "", false
}

// leaseHeldFault is what an operation that would change a leased VM gets: vCenter blocks PowerOn,
// Destroy and the like while an export lease is held.
func leaseHeldFault(lease string) *soap.Fault {
	return simulator.Fault(fmt.Sprintf("The operation is not allowed in the current state: export lease %s is held.", lease),
		&types.InvalidState{})
}

// DestroyTask is refused while an export lease is held.
func (vm *labVM) DestroyTask(ctx *simulator.Context, req *types.Destroy_Task) soap.HasFault {
	if lease, held := vm.lab.leaseHeld(vm.Self); held {
		return &methods.Destroy_TaskBody{Fault_: leaseHeldFault(lease)}
	}
	return vm.VirtualMachine.DestroyTask(ctx, req)
}

// PowerOnVMTask is refused while an export lease is held, and starts the guest's tools once the VM is
// on, if it was created with tools running.
func (vm *labVM) PowerOnVMTask(ctx *simulator.Context, req *types.PowerOnVM_Task) soap.HasFault {
	if lease, held := vm.lab.leaseHeld(vm.Self); held {
		return &methods.PowerOnVM_TaskBody{Fault_: leaseHeldFault(lease)}
	}
	res := vm.VirtualMachine.PowerOnVMTask(ctx, req)
	vm.lab.mu.Lock()
	running := vm.lab.tools[vm.Self.Value]
	vm.lab.mu.Unlock()
	if body, ok := res.(*methods.PowerOnVM_TaskBody); ok && body.Res != nil && running {
		go vm.lab.afterPowerTask(body.Res.Returnval, vm.VirtualMachine, true)
	}
	return res
}

// PowerOffVMTask stops the guest's tools along with the guest.
func (vm *labVM) PowerOffVMTask(ctx *simulator.Context, req *types.PowerOffVM_Task) soap.HasFault {
	res := vm.VirtualMachine.PowerOffVMTask(ctx, req)
	if body, ok := res.(*methods.PowerOffVM_TaskBody); ok && body.Res != nil {
		go vm.lab.afterPowerTask(body.Res.Returnval, vm.VirtualMachine, false)
	}
	return res
}

// afterPowerTask sets the tools state once a power task has succeeded; the task's own goroutine holds
// the VM while it runs, so this must wait rather than change the VM alongside it.
func (l *Lab) afterPowerTask(taskRef types.ManagedObjectReference, vm *simulator.VirtualMachine, running bool) {
	task, ok := l.model.Map().Get(taskRef).(*simulator.Task)
	if !ok {
		return
	}
	task.Wait()
	ctx := l.lockCtx()
	var state types.TaskInfoState
	ctx.WithLock(task, func() { state = task.Info.State })
	if state != types.TaskInfoStateSuccess {
		return
	}
	ctx.WithLock(vm, func() { ctx.Update(vm, toolsChanges(running)) })
}

func toolsChanges(running bool) []types.PropertyChange {
	status, runState, guestState := types.VirtualMachineToolsStatusToolsNotRunning,
		types.VirtualMachineToolsRunningStatusGuestToolsNotRunning, "notRunning"
	if running {
		status, runState, guestState = types.VirtualMachineToolsStatusToolsOk,
			types.VirtualMachineToolsRunningStatusGuestToolsRunning, "running"
	}
	return []types.PropertyChange{
		{Name: "guest.toolsStatus", Val: status},
		{Name: "guest.toolsRunningStatus", Val: string(runState)},
		{Name: "guest.guestState", Val: guestState},
		{Name: "summary.guest.toolsStatus", Val: status},
		{Name: "summary.guest.toolsRunningStatus", Val: string(runState)},
	}
}

// resolveDatastorePath maps "[LocalDS_0] dir/file.vmdk" to the file in the datastore's directory.
func (l *Lab) resolveDatastorePath(name string) (string, types.BaseMethodFault) {
	var p object.DatastorePath
	if !p.FromString(name) || p.Path == "" {
		return "", &types.InvalidDatastorePath{DatastorePath: name}
	}
	for _, e := range l.model.Map().All("Datastore") {
		if ds, ok := e.(*simulator.Datastore); ok && ds.Name == p.Datastore {
			return path.Join(ds.Summary.Url, path.Clean("/"+p.Path)), nil
		}
	}
	return "", &types.InvalidDatastore{Name: p.Datastore}
}

// leaseFault is the fault a call on a lease that is no longer ready gets.
func (e *exportLease) leaseFault() *soap.Fault {
	if e.expired {
		return simulator.Fault("The operation timed out: the lease expired without progress.", &types.Timedout{})
	}
	return simulator.Fault(fmt.Sprintf("The operation is not allowed in the current state (%s).", e.state), &types.InvalidState{})
}

// HttpNfcLeaseProgress is the only thing that keeps a lease alive.
func (e *exportLease) HttpNfcLeaseProgress(ctx *simulator.Context, req *types.HttpNfcLeaseProgress) soap.HasFault {
	body := &methods.HttpNfcLeaseProgressBody{}
	e.lab.mu.Lock()
	defer e.lab.mu.Unlock()
	if e.state != types.HttpNfcLeaseStateReady {
		body.Fault_ = e.leaseFault()
		return body
	}
	e.progressCalls++
	e.lastPercent = req.Percent
	e.lastProgress = time.Now()
	ctx.Update(e, []types.PropertyChange{{Name: "transferProgress", Val: req.Percent}})
	body.Res = &types.HttpNfcLeaseProgressResponse{}
	return body
}

// HttpNfcLeaseComplete ends a ready lease successfully.
func (e *exportLease) HttpNfcLeaseComplete(ctx *simulator.Context, req *types.HttpNfcLeaseComplete) soap.HasFault {
	body := &methods.HttpNfcLeaseCompleteBody{}
	e.lab.mu.Lock()
	defer e.lab.mu.Unlock()
	if e.state != types.HttpNfcLeaseStateReady {
		body.Fault_ = e.leaseFault()
		return body
	}
	e.completed = true
	e.finishLocked(ctx, types.HttpNfcLeaseStateDone, nil)
	body.Res = &types.HttpNfcLeaseCompleteResponse{}
	return body
}

// HttpNfcLeaseAbort ends a lease with an error. Aborting a lease that already expired is accepted and
// recorded (clients abort in their cleanup path); aborting twice or after Complete is InvalidState.
func (e *exportLease) HttpNfcLeaseAbort(ctx *simulator.Context, req *types.HttpNfcLeaseAbort) soap.HasFault {
	body := &methods.HttpNfcLeaseAbortBody{}
	e.lab.mu.Lock()
	defer e.lab.mu.Unlock()
	if e.aborted || e.completed {
		body.Fault_ = simulator.Fault(fmt.Sprintf("The operation is not allowed in the current state (%s).", e.state), &types.InvalidState{})
		return body
	}
	e.aborted = true
	fault := &types.LocalizedMethodFault{Fault: &types.RequestCanceled{}, LocalizedMessage: "Operation was canceled by the client."}
	if req.Fault != nil && req.Fault.Fault != nil {
		fault = req.Fault
		e.abortFault = reflect.TypeOf(req.Fault.Fault).Elem().Name()
	}
	if e.state == types.HttpNfcLeaseStateReady || e.state == types.HttpNfcLeaseStateInitializing {
		e.finishLocked(ctx, types.HttpNfcLeaseStateError, fault)
	}
	body.Res = &types.HttpNfcLeaseAbortResponse{}
	return body
}

// HttpNfcLeaseGetManifest lists SHA-1 and size of each disk as served.
func (e *exportLease) HttpNfcLeaseGetManifest(ctx *simulator.Context, req *types.HttpNfcLeaseGetManifest) soap.HasFault {
	body := &methods.HttpNfcLeaseGetManifestBody{}
	e.lab.mu.Lock()
	state := e.state
	e.lab.mu.Unlock()
	if state != types.HttpNfcLeaseStateReady {
		body.Fault_ = e.leaseFault()
		return body
	}
	var entries []types.HttpNfcLeaseManifestEntry
	for _, target := range e.order {
		f := e.files[target]
		sum, size, err := sha1File(f.Path)
		if err != nil {
			body.Fault_ = simulator.Fault(err.Error(), &types.FileFault{File: f.Path})
			return body
		}
		entries = append(entries, types.HttpNfcLeaseManifestEntry{
			Key: f.Key, Sha1: sum, Size: size, Disk: f.Disk, Capacity: f.Capacity,
		})
	}
	body.Res = &types.HttpNfcLeaseGetManifestResponse{Returnval: entries}
	return body
}

func sha1File(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha1.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// finishLocked moves a ready lease to done or error. Caller holds Lab.mu and the lease's object lock.
func (e *exportLease) finishLocked(ctx *simulator.Context, state types.HttpNfcLeaseState, fault *types.LocalizedMethodFault) {
	e.state = state
	e.stopLocked()
	changes := []types.PropertyChange{{Name: "state", Val: state}}
	if fault != nil {
		changes = append(changes, types.PropertyChange{Name: "error", Val: fault})
	}
	ctx.Update(e, changes)
}

// stopLocked ends in-flight downloads and the expiry timer. Caller holds Lab.mu.
func (e *exportLease) stopLocked() {
	if e.timer != nil {
		e.timer.Stop()
	}
	select {
	case <-e.done:
	default:
		close(e.done)
	}
}

// becomeReady ends the initializing phase: info is published and the timeout window starts.
func (e *exportLease) becomeReady() {
	ctx := e.lab.lockCtx()
	ctx.WithLock(e, func() {
		e.lab.mu.Lock()
		defer e.lab.mu.Unlock()
		if e.state != types.HttpNfcLeaseStateInitializing {
			return
		}
		e.state, e.lastProgress = types.HttpNfcLeaseStateReady, time.Now()
		e.timer = time.AfterFunc(e.timeout, e.checkExpiry)
		ctx.Update(e, []types.PropertyChange{
			{Name: "initializeProgress", Val: int32(100)},
			{Name: "info", Val: e.readyInfo},
			{Name: "state", Val: types.HttpNfcLeaseStateReady},
		})
	})
}

// checkExpiry runs from the timer: it expires the lease if no Progress came within the timeout,
// otherwise re-arms for the rest of the window.
func (e *exportLease) checkExpiry() {
	ctx := e.lab.lockCtx()
	ctx.WithLock(e, func() {
		e.lab.mu.Lock()
		defer e.lab.mu.Unlock()
		if e.state != types.HttpNfcLeaseStateReady {
			return
		}
		left := e.timeout - time.Since(e.lastProgress)
		if left > 0 {
			e.timer.Reset(left)
			return
		}
		e.expired = true
		e.finishLocked(ctx, types.HttpNfcLeaseStateError, &types.LocalizedMethodFault{
			Fault: &types.Timedout{},
			LocalizedMessage: fmt.Sprintf("The lease timed out: no HttpNfcLeaseProgress within %d seconds.",
				int(e.timeout/time.Second)),
		})
	})
}

// serveNFC serves GET/HEAD of a disk of one of our leases, and hands anything else under /nfc/ to vcsim
// (ImportVApp and ExportSnapshot leases are vcsim's own).
func (l *Lab) serveNFC(w http.ResponseWriter, r *http.Request) {
	ticket, target := r.PathValue("ticket"), r.PathValue("file")
	l.mu.Lock()
	lease, ok := l.byTick[ticket]
	if !ok {
		l.mu.Unlock()
		simulator.ServeNFC(w, r)
		return
	}
	file, known := lease.files[target]
	state := lease.state
	var cut *cutFault
	if known && state == types.HttpNfcLeaseStateReady && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		lease.downloads[target]++
		if r.Method == http.MethodGet {
			cut = l.takeFaultLocked(lease.vmName)
			if cut != nil {
				lease.cuts++
			}
		}
	}
	l.mu.Unlock()

	switch {
	case !known:
		http.Error(w, fmt.Sprintf("lease has no file %q", target), http.StatusNotFound)
		return
	case state == types.HttpNfcLeaseStateInitializing:
		http.Error(w, "lease is initializing: its URLs are not issued yet", http.StatusNotFound)
		return
	case state != types.HttpNfcLeaseStateReady:
		http.Error(w, fmt.Sprintf("lease is %s", state), http.StatusGone)
		return
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "export leases serve GET and HEAD only", http.StatusMethodNotAllowed)
		return
	}
	f, err := os.Open(file.Path)
	if err != nil {
		http.Error(w, fmt.Sprintf("open backing file: %v", err), http.StatusInternalServerError)
		return
	}
	defer f.Close()

	lw := &leaseWriter{ResponseWriter: w, lab: l, lease: lease, target: target, limit: -1}
	if cut != nil {
		lw.limit = cut.CutAfterBytes
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if r.Header.Get("Range") != "" || r.Method == http.MethodHead {
		st, err := f.Stat()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		http.ServeContent(lw, r, "", st.ModTime(), f)
	} else {
		// A real export streams a converted disk of unknown length: chunked, no Content-Length.
		w.WriteHeader(http.StatusOK)
		if fl, ok := w.(http.Flusher); ok {
			fl.Flush()
		}
		buf := make([]byte, copyChunk)
		_, _ = io.CopyBuffer(lw, onlyReader{f}, buf)
	}
	if lw.stopped && !cut.CleanEnd {
		abortConnection(w)
	}
}

// onlyReader hides os.File's ReadFrom/WriterTo so io.CopyBuffer really goes through leaseWriter in chunks.
type onlyReader struct{ io.Reader }

// leaseWriter counts served bytes, paces them to the VM's throttle (read at every chunk, so a throttle
// set or lifted mid-download takes effect at once), and stops the body when the lease ends or an
// injected cut is reached.
type leaseWriter struct {
	http.ResponseWriter
	lab     *Lab
	lease   *exportLease
	target  string
	limit   int64 // bytes still allowed before the injected cut; -1 for none
	stopped bool
}

func (lw *leaseWriter) Write(p []byte) (int, error) {
	select {
	case <-lw.lease.done:
		lw.stopped = true
		return 0, io.ErrClosedPipe
	default:
	}
	if lw.limit >= 0 && int64(len(p)) > lw.limit {
		p = p[:lw.limit]
		lw.stopped = true
	}
	n, err := lw.ResponseWriter.Write(p)
	if lw.limit >= 0 {
		lw.limit -= int64(n)
	}
	lw.lab.mu.Lock()
	lw.lease.bytesServed[lw.target] += int64(n)
	rate := lw.lab.throttles[lw.lease.vmName]
	lw.lab.mu.Unlock()
	if rate > 0 && n > 0 {
		pause := time.Duration(float64(n) / float64(rate) * float64(time.Second))
		select {
		case <-time.After(pause):
		case <-lw.lease.done:
		}
	}
	if err == nil && lw.stopped {
		err = io.ErrShortWrite
	}
	return n, err
}

func (lw *leaseWriter) Flush() {
	if fl, ok := lw.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
}

// abortConnection sends what was written so far and drops the TCP connection mid-body, which is what a
// client sees when an ESXi host or the network dies during a transfer.
func abortConnection(w http.ResponseWriter) {
	if fl, ok := w.(http.Flusher); ok {
		fl.Flush()
	}
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			// Close the TCP connection under TLS without a close_notify alert: a cut, not a clean end.
			if tc, ok := conn.(*tls.Conn); ok {
				_ = tc.NetConn().Close()
			} else {
				_ = conn.Close()
			}
			return
		}
	}
	panic(http.ErrAbortHandler)
}
