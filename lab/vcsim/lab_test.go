// End-to-end tests of vcsim-lab over real HTTPS: openssl-made certificates, qemu-img-made VMDKs, and
// govmomi's SOAP client against the in-process server. Missing tools fail the test; nothing is skipped.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/nfc"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	testUser     = "lab-admin@vsphere.local"
	testPassword = `pa:ss"word`
)

// certs are the openssl-made CA and leaf shared by all tests of this package.
type certs struct {
	caFile, certFile, keyFile string
	pool                      *x509.CertPool
	leafDER                   []byte
}

func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is required by these tests and is not on PATH (install it: apt-get install %s)", name,
			map[string]string{"qemu-img": "qemu-utils", "openssl": "openssl"}[name])
	}
}

func runTool(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func makeCerts(t *testing.T) certs {
	t.Helper()
	requireTool(t, "openssl")
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	runTool(t, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p("ca.key"), "-out", p("ca.pem"),
		"-days", "2", "-subj", "/CN=vcsim-lab test CA", "-addext", "basicConstraints=critical,CA:TRUE")
	runTool(t, "openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", p("leaf.key"), "-out", p("leaf.csr"), "-subj", "/CN=localhost")
	if err := os.WriteFile(p("ext"), []byte("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	runTool(t, "openssl", "x509", "-req", "-in", p("leaf.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"), "-CAcreateserial",
		"-out", p("leaf.pem"), "-days", "2", "-extfile", p("ext"))
	caPEM, err := os.ReadFile(p("ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("openssl CA PEM did not parse")
	}
	pair, err := tls.LoadX509KeyPair(p("leaf.pem"), p("leaf.key"))
	if err != nil {
		t.Fatal(err)
	}
	return certs{caFile: p("ca.pem"), certFile: p("leaf.pem"), keyFile: p("leaf.key"), pool: pool, leafDER: pair.Certificate[0]}
}

type harness struct {
	t    *testing.T
	lab  *Lab
	c    certs
	http *http.Client
}

func startLab(t *testing.T, leaseTimeout time.Duration) *harness {
	t.Helper()
	return startLabWith(t, Config{LeaseTimeout: leaseTimeout})
}

// startLabWith starts a lab with cfg's mode settings and the test's address, certificate and credentials.
func startLabWith(t *testing.T, cfg Config) *harness {
	t.Helper()
	c := makeCerts(t)
	cfg.Listen, cfg.CertFile, cfg.KeyFile, cfg.Username, cfg.Password = "127.0.0.1:0", c.certFile, c.keyFile, testUser, testPassword
	lab, err := Start(cfg)
	if err != nil {
		t.Fatalf("start lab: %v", err)
	}
	t.Cleanup(lab.Close)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool}}}
	return &harness{t: t, lab: lab, c: c, http: hc}
}

// control calls the /lab API with the lab credentials and decodes a JSON answer into out (if non-nil).
func (h *harness) control(method, path string, body any, out any) int {
	h.t.Helper()
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			h.t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, h.lab.ControlURL.String()+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	req.SetBasicAuth(testUser, testPassword)
	resp, err := h.http.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			h.t.Fatalf("%s %s: decode %q: %v", method, path, data, err)
		}
	}
	return resp.StatusCode
}

func (h *harness) createVM(spec VMSpec) VMView {
	h.t.Helper()
	var v VMView
	var e map[string]string
	if st := h.control("POST", "/vms", spec, &v); st != http.StatusCreated {
		h.control("POST", "/vms", spec, &e)
		h.t.Fatalf("create VM %s: status %d: %s", spec.Name, st, e["error"])
	}
	return v
}

// login opens a SOAP session that trusts only the test CA.
func (h *harness) login(password string) (*vim25.Client, error) {
	ctx := context.Background()
	sc := soap.NewClient(h.lab.SDKURL, false)
	if err := sc.SetRootCAs(h.c.caFile); err != nil {
		return nil, err
	}
	vc, err := vim25.NewClient(ctx, sc)
	if err != nil {
		return nil, err
	}
	if err := session.NewManager(vc).Login(ctx, url.UserPassword(testUser, password)); err != nil {
		return nil, err
	}
	return vc, nil
}

func (h *harness) mustLogin() *vim25.Client {
	h.t.Helper()
	vc, err := h.login(testPassword)
	if err != nil {
		h.t.Fatalf("login: %v", err)
	}
	return vc
}

// makeVMDK writes dataBytes of random data into a raw image of sizeMiB and converts it with qemu-img.
func makeVMDK(t *testing.T, dir, name string, sizeMiB, dataBytes int, subformat string) string {
	t.Helper()
	requireTool(t, "qemu-img")
	raw := filepath.Join(dir, name+".raw")
	buf := make([]byte, dataBytes)
	if _, err := rand.Read(buf); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(buf, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(sizeMiB) << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out := filepath.Join(dir, name+".vmdk")
	runTool(t, "qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat="+subformat, raw, out)
	return out
}

func sha256File(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

func (h *harness) get(u string, header map[string]string) (*http.Response, []byte, error) {
	req, err := http.NewRequest("GET", u, nil)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := h.http.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func (h *harness) lease(id string) LeaseRecord {
	h.t.Helper()
	var all []LeaseRecord
	if st := h.control("GET", "/leases", nil, &all); st != http.StatusOK {
		h.t.Fatalf("GET /leases: %d", st)
	}
	for _, r := range all {
		if r.ID == id {
			return r
		}
	}
	h.t.Fatalf("lease %s is not in the recording (%d leases)", id, len(all))
	return LeaseRecord{}
}

func exportVM(ctx context.Context, vc *vim25.Client, vm types.ManagedObjectReference) (*nfc.Lease, error) {
	res, err := methods.ExportVm(ctx, vc, &types.ExportVm{This: vm})
	if err != nil {
		return nil, err
	}
	return nfc.NewLease(vc, res.Returnval), nil
}

func leaseState(t *testing.T, vc *vim25.Client, lease *nfc.Lease) mo.HttpNfcLease {
	t.Helper()
	var l mo.HttpNfcLease
	if err := property.DefaultCollector(vc).RetrieveOne(context.Background(), lease.Reference(), []string{"state", "error", "info"}, &l); err != nil {
		t.Fatalf("read lease: %v", err)
	}
	return l
}

func wantFault(t *testing.T, err error, target types.BaseMethodFault, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: succeeded, want fault %T", what, target)
	}
	if !fault.Is(err, target) {
		t.Fatalf("%s: error %v, want fault %T", what, err, target)
	}
}

func TestExportVmServesDisksByteForByte(t *testing.T) {
	h := startLab(t, 300*time.Second)
	ctx := context.Background()
	dir := t.TempDir()
	d0 := makeVMDK(t, dir, "root", 8, 1536<<10, "streamOptimized")
	d1 := makeVMDK(t, dir, "data", 4, 256<<10, "streamOptimized")

	v := h.createVM(VMSpec{
		Name: "exp01", Folder: "team/x", CPUs: 8, CoresPerSocket: 4, MemoryMB: 4096, Firmware: "efi", SecureBoot: true, VTPM: true,
		GuestID: "otherGuest64", HWVersion: "vmx-19",
		Disks: []DiskSpec{{Bus: "pvscsi", Path: d0}, {Bus: "sata", Path: d1}},
		NICs: []NICSpec{{Type: "e1000", Network: "VM Network", MAC: "00:50:56:AA:BB:01"},
			{Type: "vmxnet3", Network: "DC0_DVPG0", MAC: "00:50:56:aa:bb:02"}},
	})
	vc := h.mustLogin()

	// The nested-folder VM is where a client will look for it.
	found, err := object.NewSearchIndex(vc).FindByInventoryPath(ctx, "DC0/vm/team/x/exp01")
	if err != nil || found == nil {
		t.Fatalf("FindByInventoryPath DC0/vm/team/x/exp01: %v, %v", found, err)
	}
	vmRef := found.Reference()
	if vmRef.Value != v.MoID {
		t.Fatalf("inventory path found %s, control API created %s", vmRef.Value, v.MoID)
	}
	var vm mo.VirtualMachine
	if err := property.DefaultCollector(vc).RetrieveOne(ctx, vmRef, []string{"config", "runtime.powerState", "summary.config.tpmPresent"}, &vm); err != nil {
		t.Fatal(err)
	}
	hw := vm.Config.Hardware
	if hw.NumCPU != 8 || *hw.NumCoresPerSocket != 4 || hw.MemoryMB != 4096 || vm.Config.Firmware != "efi" ||
		!*vm.Config.BootOptions.EfiSecureBootEnabled || vm.Config.Version != "vmx-19" || vm.Config.GuestId != "otherGuest64" {
		t.Fatalf("config does not match the spec: cpu %d cps %d mem %d fw %s version %s guest %s",
			hw.NumCPU, *hw.NumCoresPerSocket, hw.MemoryMB, vm.Config.Firmware, vm.Config.Version, vm.Config.GuestId)
	}
	if vm.Summary.Config.TpmPresent == nil || !*vm.Summary.Config.TpmPresent {
		t.Fatal("summary.config.tpmPresent is not true")
	}
	devices := object.VirtualDeviceList(hw.Device)
	if len(devices.SelectByType((*types.VirtualTPM)(nil))) != 1 {
		t.Fatal("no VirtualTPM device")
	}
	nics := devices.SelectByType((*types.VirtualEthernetCard)(nil))
	if len(nics) != 2 {
		t.Fatalf("%d NICs, want 2", len(nics))
	}
	e1000, ok := nics[0].(*types.VirtualE1000)
	if !ok || e1000.MacAddress != "00:50:56:aa:bb:01" || e1000.AddressType != "manual" {
		t.Fatalf("first NIC %T %+v", nics[0], nics[0].GetVirtualDevice())
	}
	if b, ok := e1000.Backing.(*types.VirtualEthernetCardNetworkBackingInfo); !ok || b.DeviceName != "VM Network" {
		t.Fatalf("first NIC backing %#v", e1000.Backing)
	}
	vmx, ok := nics[1].(*types.VirtualVmxnet3)
	if !ok || vmx.MacAddress != "00:50:56:aa:bb:02" {
		t.Fatalf("second NIC %T", nics[1])
	}
	dvb, ok := vmx.Backing.(*types.VirtualEthernetCardDistributedVirtualPortBackingInfo)
	if !ok || dvb.Port.SwitchUuid == "" || !strings.HasPrefix(dvb.Port.PortgroupKey, "dvportgroup-") {
		t.Fatalf("second NIC backing %#v", vmx.Backing)
	}

	lease, err := exportVM(ctx, vc, vmRef)
	if err != nil {
		t.Fatalf("ExportVm: %v", err)
	}
	info, err := lease.Wait(ctx, nil)
	if err != nil {
		t.Fatalf("lease wait: %v", err)
	}
	if info.LeaseTimeout != 300 || info.Entity != vmRef {
		t.Fatalf("lease info timeout %d entity %v", info.LeaseTimeout, info.Entity)
	}
	if want := int64((8<<20)+(4<<20)) / 1024; info.TotalDiskCapacityInKB != want {
		t.Fatalf("totalDiskCapacityInKB %d, want %d", info.TotalDiskCapacityInKB, want)
	}
	sum := sha1.Sum(h.c.leafDER)
	wantKeys := []string{"/" + vmRef.Value + "/ParaVirtualSCSIController0:0", "/" + vmRef.Value + "/VirtualAHCIController0:0"}
	files := []string{d0, d1}
	if len(info.DeviceUrl) != 2 {
		t.Fatalf("%d device URLs, want 2", len(info.DeviceUrl))
	}
	for i, du := range info.DeviceUrl {
		if du.Key != wantKeys[i] || du.Disk == nil || !*du.Disk || du.TargetId != fmt.Sprintf("disk-%d.vmdk", i) || du.FileSize != 0 {
			t.Fatalf("device URL %d: %+v", i, du)
		}
		u, err := url.Parse(du.Url)
		if err != nil || u.Host != h.lab.SDKURL.Host || !strings.HasPrefix(u.Path, "/nfc/") || !strings.HasSuffix(u.Path, du.TargetId) {
			t.Fatalf("device URL %d: %q", i, du.Url)
		}
		if got := strings.ReplaceAll(du.SslThumbprint, ":", ""); !strings.EqualFold(got, hex.EncodeToString(sum[:])) {
			t.Fatalf("sslThumbprint %s is not the SHA-1 of the served certificate", du.SslThumbprint)
		}
		resp, body, err := h.get(du.Url, nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %v %v", du.Url, resp, err)
		}
		if resp.ContentLength != -1 {
			t.Fatalf("GET %s: Content-Length %d, want none (streamed like a real export)", du.Url, resp.ContentLength)
		}
		got := sha256.Sum256(body)
		if hex.EncodeToString(got[:]) != sha256File(t, files[i]) {
			t.Fatalf("disk %d: served bytes differ from %s", i, files[i])
		}
	}
	// Range works and serves the same bytes.
	resp, part, err := h.get(info.DeviceUrl[0].Url, map[string]string{"Range": "bytes=100-1123"})
	if err != nil || resp.StatusCode != http.StatusPartialContent || len(part) != 1024 {
		t.Fatalf("ranged GET: %v %v len %d", resp, err, len(part))
	}
	whole, _ := os.ReadFile(d0)
	if !bytes.Equal(part, whole[100:1124]) {
		t.Fatal("ranged GET bytes differ from the file")
	}
	if err := lease.Progress(ctx, 50); err != nil {
		t.Fatalf("HttpNfcLeaseProgress: %v", err)
	}
	manifest, err := lease.GetManifest(ctx)
	if err != nil || len(manifest) != 2 {
		t.Fatalf("HttpNfcLeaseGetManifest: %v %v", manifest, err)
	}
	if s := sha1.Sum(whole); manifest[0].Sha1 != hex.EncodeToString(s[:]) || manifest[0].Key != wantKeys[0] {
		t.Fatalf("manifest entry %+v", manifest[0])
	}
	if err := lease.Complete(ctx); err != nil {
		t.Fatalf("HttpNfcLeaseComplete: %v", err)
	}
	if st := leaseState(t, vc, lease); st.State != types.HttpNfcLeaseStateDone {
		t.Fatalf("state after Complete: %s", st.State)
	}
	if resp, _, err := h.get(info.DeviceUrl[0].Url, nil); err != nil || resp.StatusCode != http.StatusGone {
		t.Fatalf("GET after Complete: %v %v, want 410", resp, err)
	}
	wantFault(t, lease.Progress(ctx, 60), &types.InvalidState{}, "Progress after Complete")

	rec := h.lease(lease.Reference().Value)
	st0, _ := os.Stat(d0)
	st1, _ := os.Stat(d1)
	if !rec.Completed || rec.Aborted || rec.Expired || rec.State != "done" || rec.VM.MoID != vmRef.Value || rec.VM.Name != "exp01" ||
		rec.ProgressCalls.Count != 1 || rec.ProgressCalls.LastPercent != 50 ||
		rec.BytesServed["disk-0.vmdk"] != st0.Size()+1024 || rec.BytesServed["disk-1.vmdk"] != st1.Size() {
		t.Fatalf("recording: %+v (sizes %d, %d)", rec, st0.Size(), st1.Size())
	}
}

func TestAbortIsRecordedAndEndsTheLease(t *testing.T) {
	h := startLab(t, 300*time.Second)
	ctx := context.Background()
	d := makeVMDK(t, t.TempDir(), "a", 2, 64<<10, "streamOptimized")
	v := h.createVM(VMSpec{Name: "abort01", ExportNvram: true, Disks: []DiskSpec{{Bus: "nvme", Path: d}, {Bus: "lsilogic", Path: d}, {Bus: "ide", Path: d}}})
	vc := h.mustLogin()
	vmRef := types.ManagedObjectReference{Type: "VirtualMachine", Value: v.MoID}
	lease, err := exportVM(ctx, vc, vmRef)
	if err != nil {
		t.Fatal(err)
	}
	info, err := lease.Wait(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"VirtualNVMEController0:0", "VirtualLsiLogicController0:0", "VirtualIDEController0:0", "nvram"}
	if len(info.DeviceUrl) != len(want) {
		t.Fatalf("%d device URLs, want %d", len(info.DeviceUrl), len(want))
	}
	for i, du := range info.DeviceUrl {
		if du.Key != "/"+v.MoID+"/"+want[i] || *du.Disk != (i < 3) {
			t.Fatalf("device %d key %s disk %v, want suffix %s", i, du.Key, *du.Disk, want[i])
		}
	}
	if nv := info.DeviceUrl[3]; nv.TargetId != "abort01.nvram" {
		t.Fatalf("nvram entry %+v", nv)
	} else if resp, _, err := h.get(nv.Url, nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET nvram: %v %v", resp, err)
	}
	// While the lease is held the VM may not be powered on or destroyed, as on vCenter.
	vmObj := object.NewVirtualMachine(vc, vmRef)
	if _, err := vmObj.PowerOn(ctx); err == nil {
		t.Fatal("PowerOn while an export lease is held succeeded")
	} else {
		wantFault(t, err, &types.InvalidState{}, "PowerOn while leased")
	}
	var e map[string]string
	if st := h.control("DELETE", "/vms/abort01", nil, &e); st != http.StatusConflict || !strings.Contains(e["error"], "export lease") {
		t.Fatalf("DELETE while leased: %d %v", st, e)
	}
	if err := lease.Abort(ctx, nil); err != nil {
		t.Fatalf("HttpNfcLeaseAbort: %v", err)
	}
	st := leaseState(t, vc, lease)
	if st.State != types.HttpNfcLeaseStateError || st.Error == nil {
		t.Fatalf("after Abort: state %s error %v", st.State, st.Error)
	}
	if resp, _, err := h.get(info.DeviceUrl[0].Url, nil); err != nil || resp.StatusCode != http.StatusGone {
		t.Fatalf("GET after Abort: %v %v, want 410", resp, err)
	}
	wantFault(t, lease.Abort(ctx, nil), &types.InvalidState{}, "second Abort")
	wantFault(t, lease.Complete(ctx), &types.InvalidState{}, "Complete after Abort")
	rec := h.lease(lease.Reference().Value)
	if !rec.Aborted || rec.Completed || rec.Expired || rec.State != "error" {
		t.Fatalf("recording: %+v", rec)
	}
	if task, err := vmObj.PowerOn(ctx); err != nil || task.Wait(ctx) != nil {
		t.Fatalf("PowerOn after the lease ended: %v", err)
	}
}

func TestLeaseExpiresWithoutProgress(t *testing.T) {
	const timeout = 2 * time.Second
	h := startLab(t, timeout)
	ctx := context.Background()
	d := makeVMDK(t, t.TempDir(), "a", 2, 64<<10, "streamOptimized")
	v := h.createVM(VMSpec{Name: "exp02", Disks: []DiskSpec{{Bus: "pvscsi", Path: d}}})
	vc := h.mustLogin()
	lease, err := exportVM(ctx, vc, types.ManagedObjectReference{Type: "VirtualMachine", Value: v.MoID})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	info, err := lease.Wait(ctx, nil)
	if err != nil || info.LeaseTimeout != 2 {
		t.Fatalf("lease: %v %v", info, err)
	}
	time.Sleep(timeout / 2)
	if err := lease.Progress(ctx, 10); err != nil {
		t.Fatalf("Progress inside the window: %v", err)
	}
	// Past the original deadline: Progress extended it. Downloading now must not extend it further.
	time.Sleep(time.Until(start.Add(timeout + 500*time.Millisecond)))
	if st := leaseState(t, vc, lease); st.State != types.HttpNfcLeaseStateReady {
		t.Fatalf("lease %s after a Progress call, want ready", st.State)
	}
	if resp, _, err := h.get(info.DeviceUrl[0].Url, nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET while ready: %v %v", resp, err)
	}
	time.Sleep(time.Until(start.Add(timeout + timeout/2 + 700*time.Millisecond)))
	st := leaseState(t, vc, lease)
	if st.State != types.HttpNfcLeaseStateError || st.Error == nil {
		t.Fatalf("lease %s (error %v) after the timeout, want error", st.State, st.Error)
	}
	if _, ok := st.Error.Fault.(*types.Timedout); !ok {
		t.Fatalf("lease error %T, want Timedout", st.Error.Fault)
	}
	if resp, _, err := h.get(info.DeviceUrl[0].Url, nil); err != nil || resp.StatusCode != http.StatusGone {
		t.Fatalf("GET after expiry: %v %v, want 410", resp, err)
	}
	wantFault(t, lease.Progress(ctx, 20), &types.Timedout{}, "Progress after expiry")
	if err := lease.Abort(ctx, nil); err != nil {
		t.Fatalf("Abort after expiry (cleanup path) must be accepted: %v", err)
	}
	rec := h.lease(lease.Reference().Value)
	if !rec.Expired || !rec.Aborted || rec.Completed || rec.ProgressCalls.Count != 1 {
		t.Fatalf("recording: %+v", rec)
	}
}

func TestFaultInjectionCutsDownload(t *testing.T) {
	h := startLab(t, 300*time.Second)
	ctx := context.Background()
	d := makeVMDK(t, t.TempDir(), "a", 4, 512<<10, "streamOptimized")
	v := h.createVM(VMSpec{Name: "cut01", Disks: []DiskSpec{{Bus: "pvscsi", Path: d}}})
	if st := h.control("POST", "/faults", map[string]any{"cutAfterBytes": 100000, "times": 1, "vm": "cut01"}, nil); st != http.StatusCreated {
		t.Fatalf("POST /faults: %d", st)
	}
	if st := h.control("POST", "/faults", map[string]any{"cutAfterBytes": -1, "times": 1}, nil); st != http.StatusBadRequest {
		t.Fatalf("POST /faults with a negative cut: %d, want 400", st)
	}
	vc := h.mustLogin()
	lease, err := exportVM(ctx, vc, types.ManagedObjectReference{Type: "VirtualMachine", Value: v.MoID})
	if err != nil {
		t.Fatal(err)
	}
	info, err := lease.Wait(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, body, err := h.get(info.DeviceUrl[0].Url, nil)
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut download: err %v (status %v), want unexpected EOF", err, resp)
	}
	if len(body) != 100000 {
		t.Fatalf("cut download delivered %d bytes, want exactly 100000", len(body))
	}
	_, body, err = h.get(info.DeviceUrl[0].Url, nil)
	st, _ := os.Stat(d)
	if err != nil || int64(len(body)) != st.Size() {
		t.Fatalf("second download (fault used up): %d bytes, %v", len(body), err)
	}
	var pending []cutFault
	h.control("GET", "/faults", nil, &pending)
	if len(pending) != 0 {
		t.Fatalf("faults left: %+v", pending)
	}
	rec := h.lease(lease.Reference().Value)
	if rec.Cuts != 1 || rec.Downloads["disk-0.vmdk"] != 2 || rec.BytesServed["disk-0.vmdk"] != 100000+st.Size() {
		t.Fatalf("recording: %+v", rec)
	}
	if err := lease.Abort(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

// TestThrottlePacesDownloads: a VM's throttle slows its disk downloads to the set rate, so a test can
// act while a transfer is in flight without making the disk large; lifting it applies mid-download.
func TestThrottlePacesDownloads(t *testing.T) {
	h := startLab(t, 300*time.Second)
	ctx := context.Background()
	d := makeVMDK(t, t.TempDir(), "a", 4, 1<<20, "streamOptimized")
	st, err := os.Stat(d)
	if err != nil {
		t.Fatal(err)
	}
	v := h.createVM(VMSpec{Name: "slow01", Disks: []DiskSpec{{Bus: "pvscsi", Path: d}}})
	if code := h.control("PUT", "/throttles/slow01", map[string]any{"bytesPerSecond": 0}, nil); code != http.StatusBadRequest {
		t.Fatalf("PUT a zero throttle: %d, want 400", code)
	}
	rate := st.Size() * 2 // the download should take at least half a second
	if code := h.control("PUT", "/throttles/slow01", map[string]any{"bytesPerSecond": rate}, nil); code != http.StatusOK {
		t.Fatalf("PUT /throttles/slow01: %d", code)
	}
	vc := h.mustLogin()
	lease, err := exportVM(ctx, vc, types.ManagedObjectReference{Type: "VirtualMachine", Value: v.MoID})
	if err != nil {
		t.Fatal(err)
	}
	info, err := lease.Wait(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	_, body, err := h.get(info.DeviceUrl[0].Url, nil)
	took := time.Since(started)
	if err != nil || int64(len(body)) != st.Size() {
		t.Fatalf("throttled download: %d of %d bytes, %v", len(body), st.Size(), err)
	}
	if took < 450*time.Millisecond {
		t.Fatalf("throttled download of %d bytes at %d B/s took %v, want at least 0.5 s", st.Size(), rate, took)
	}
	if code := h.control("DELETE", "/throttles/slow01", nil, nil); code != http.StatusNoContent {
		t.Fatalf("DELETE /throttles/slow01: %d", code)
	}
	if err := lease.Abort(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

func TestCleanEndFaultClosesTheBodyNormallyAtTheCut(t *testing.T) {
	h := startLab(t, 300*time.Second)
	ctx := context.Background()
	d := makeVMDK(t, t.TempDir(), "a", 4, 512<<10, "streamOptimized")
	v := h.createVM(VMSpec{Name: "clean01", Disks: []DiskSpec{{Bus: "pvscsi", Path: d}}})
	if st := h.control("POST", "/faults", map[string]any{"cutAfterBytes": 65536, "times": 1, "vm": "clean01", "cleanEnd": true}, nil); st != http.StatusCreated {
		t.Fatalf("POST /faults: %d", st)
	}
	vc := h.mustLogin()
	lease, err := exportVM(ctx, vc, types.ManagedObjectReference{Type: "VirtualMachine", Value: v.MoID})
	if err != nil {
		t.Fatal(err)
	}
	info, err := lease.Wait(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, body, err := h.get(info.DeviceUrl[0].Url, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("clean cut: err %v, response %v; want a normal end", err, resp)
	}
	if len(body) != 65536 {
		t.Fatalf("clean cut delivered %d bytes, want exactly 65536", len(body))
	}
	rec := h.lease(lease.Reference().Value)
	if rec.Cuts != 1 {
		t.Fatalf("recording: %+v", rec)
	}
}

func TestFaultsLikeARealVCenter(t *testing.T) {
	h := startLab(t, 300*time.Second)
	ctx := context.Background()

	_, err := h.login("wrong")
	wantFault(t, err, &types.InvalidLogin{}, "login with a wrong password")

	d := makeVMDK(t, t.TempDir(), "a", 2, 64<<10, "monolithicSparse")
	on := h.createVM(VMSpec{Name: "on01", Power: "on", Tools: "notRunning", Disks: []DiskSpec{{Bus: "sata", Path: d}}})
	tools := h.createVM(VMSpec{Name: "on02", Power: "on", Disks: []DiskSpec{{Bus: "sata", Path: d}}})
	if on.PowerState != "poweredOn" || on.ToolsRunning != "guestToolsNotRunning" || tools.ToolsRunning != "guestToolsRunning" {
		t.Fatalf("power/tools: %s %s, %s", on.PowerState, on.ToolsRunning, tools.ToolsRunning)
	}
	vc := h.mustLogin()
	onRef := types.ManagedObjectReference{Type: "VirtualMachine", Value: on.MoID}
	_, err = exportVM(ctx, vc, onRef)
	wantFault(t, err, &types.InvalidPowerState{}, "ExportVm of a powered-on VM")
	_, err = exportVM(ctx, vc, types.ManagedObjectReference{Type: "VirtualMachine", Value: "vm-424242"})
	wantFault(t, err, &types.ManagedObjectNotFound{}, "ExportVm of an unknown moref")

	err = object.NewVirtualMachine(vc, onRef).ShutdownGuest(ctx)
	wantFault(t, err, &types.ToolsUnavailable{}, "ShutdownGuest without tools")

	toolsVM := object.NewVirtualMachine(vc, types.ManagedObjectReference{Type: "VirtualMachine", Value: tools.MoID})
	if err := toolsVM.ShutdownGuest(ctx); err != nil {
		t.Fatalf("ShutdownGuest with tools running: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var vm mo.VirtualMachine
		if err := toolsVM.Properties(ctx, toolsVM.Reference(), []string{"runtime.powerState", "guest.toolsRunningStatus"}, &vm); err != nil {
			t.Fatal(err)
		}
		if vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOff && vm.Guest.ToolsRunningStatus == "guestToolsNotRunning" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after ShutdownGuest: %s, tools %s", vm.Runtime.PowerState, vm.Guest.ToolsRunningStatus)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The control API wants the lab credentials, and rejects bad specs with a reason.
	req, _ := http.NewRequest("GET", h.lab.ControlURL.String()+"/leases", nil)
	if resp, err := h.http.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("control API without auth: %v %v", resp, err)
	}
	var e map[string]string
	if st := h.control("POST", "/vms", VMSpec{Name: "bad01", SecureBoot: true}, &e); st != http.StatusBadRequest || !strings.Contains(e["error"], "efi") {
		t.Fatalf("secure boot on BIOS: %d %v", st, e)
	}
	if st := h.control("POST", "/vms", VMSpec{Name: "bad02", Disks: []DiskSpec{{Bus: "scsi", Path: "/etc/hostname"}}}, &e); st != http.StatusBadRequest || !strings.Contains(e["error"], "not a VMDK") {
		t.Fatalf("non-VMDK disk: %d %v", st, e)
	}
	if st := h.control("POST", "/vms", VMSpec{Name: "on01"}, &e); st != http.StatusBadRequest {
		t.Fatalf("duplicate name: %d %v", st, e)
	}
	if st := h.control("DELETE", "/vms/on01", nil, nil); st != http.StatusNoContent {
		t.Fatalf("DELETE /vms/on01: %d", st)
	}
	if st := h.control("GET", "/vms/on01", nil, &e); st != http.StatusNotFound {
		t.Fatalf("GET deleted VM: %d", st)
	}
	var n NetworkView
	if st := h.control("POST", "/networks", NetworkSpec{Name: "pg-dv", Kind: "distributed", VLAN: 42}, &n); st != http.StatusCreated || n.PortgroupKey == "" || n.SwitchUUID == "" {
		t.Fatalf("POST /networks distributed: %d %+v", st, n)
	}
	if st := h.control("POST", "/networks", NetworkSpec{Name: "pg-std", Kind: "standard"}, &n); st != http.StatusCreated || n.Kind != "standard" {
		t.Fatalf("POST /networks standard: %d %+v", st, n)
	}
	nv := h.createVM(VMSpec{Name: "net01", NICs: []NICSpec{{Type: "e1000e", Network: "pg-dv"}, {Type: "vmxnet3", Network: "pg-std"}}})
	if len(nv.NICs) != 2 || nv.NICs[0].Network != "pg-dv" || nv.NICs[0].Type != "e1000e" || nv.NICs[1].Network != "pg-std" {
		t.Fatalf("NICs on new port groups: %+v", nv.NICs)
	}
}

func TestCommandLineContract(t *testing.T) {
	c := makeCerts(t)
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready.json")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var stderr bytes.Buffer
	// On an early failure, still stop the server so its datastore directory is removed.
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	})
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-tlscert", c.certFile, "-tlskey", c.keyFile,
			"-username", testUser, "-password", testPassword, "-lease-timeout", "30", "-ready-file", ready, "-nfc-star-host"}, &stderr)
	}()
	var info readyInfo
	deadline := time.Now().Add(20 * time.Second)
	for {
		data, err := os.ReadFile(ready)
		if err == nil {
			if err := json.Unmarshal(data, &info); err != nil {
				t.Fatalf("ready file %q: %v", data, err)
			}
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run ended before ready: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("no ready file after 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	u, err := url.Parse(info.URL)
	if err != nil || u.Scheme != "https" || u.Path != "/sdk" || u.Hostname() != "127.0.0.1" || info.PID != os.Getpid() ||
		info.Control != "https://"+u.Host+"/lab" {
		t.Fatalf("ready file: %+v", info)
	}
	if st, err := os.Stat(info.DatastoreRoot); err != nil || !st.IsDir() {
		t.Fatalf("datastoreRoot %s: %v", info.DatastoreRoot, err)
	}
	// The star host option shows in device URLs.
	h := &harness{t: t, c: c, lab: &Lab{SDKURL: u, ControlURL: &url.URL{Scheme: "https", Host: u.Host, Path: "/lab"}},
		http: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool}}}}
	d := makeVMDK(t, dir, "a", 2, 64<<10, "streamOptimized")
	v := h.createVM(VMSpec{Name: "star01", Disks: []DiskSpec{{Bus: "pvscsi", Path: d}}})
	vc := h.mustLogin()
	lease, err := exportVM(context.Background(), vc, types.ManagedObjectReference{Type: "VirtualMachine", Value: v.MoID})
	if err != nil {
		t.Fatal(err)
	}
	li, err := lease.Wait(context.Background(), nil)
	if err != nil || !strings.HasPrefix(li.DeviceUrl[0].Url, "https://*/nfc/") {
		t.Fatalf("star host URL: %v %v", li, err)
	}
	cancel()
	select {
	case err := <-done:
		done <- nil // for the cleanup above
		if err != nil {
			t.Fatalf("run after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop within 10s of cancellation")
	}
	if _, err := os.Stat(ready); !os.IsNotExist(err) {
		t.Fatalf("ready file still there after shutdown: %v", err)
	}
	if _, err := os.Stat(info.DatastoreRoot); !os.IsNotExist(err) {
		t.Fatalf("datastore directory still there after shutdown: %v", err)
	}
	if err := run(context.Background(), []string{"-tlscert", c.certFile}, io.Discard); err == nil {
		t.Fatal("run without -tlskey/-ready-file succeeded")
	}
}

func TestInspectVMDK(t *testing.T) {
	dir := t.TempDir()
	desc := filepath.Join(dir, "d.vmdk")
	os.WriteFile(desc, []byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"d-flat.vmdk\" 0\nRW 1024 ZERO\n"), 0o600)
	info, err := inspectVMDK(desc)
	if err != nil || info.CapacityBytes != 3072*512 || len(info.Extents) != 1 || info.Extents[0] != "d-flat.vmdk" {
		t.Fatalf("descriptor: %+v %v", info, err)
	}
	evil := filepath.Join(dir, "e.vmdk")
	os.WriteFile(evil, []byte("# Disk DescriptorFile\nRW 2048 FLAT \"../../etc/passwd\" 0\n"), 0o600)
	if _, err := inspectVMDK(evil); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("escaping extent accepted: %v", err)
	}
	huge := filepath.Join(dir, "h.vmdk")
	hdr := make([]byte, 512)
	copy(hdr, "KDMV")
	for i := 12; i < 20; i++ {
		hdr[i] = 0xff
	}
	os.WriteFile(huge, hdr, 0o600)
	if _, err := inspectVMDK(huge); err == nil || !strings.Contains(err.Error(), "byte 12") {
		t.Fatalf("absurd capacity accepted: %v", err)
	}
}

// TestLabVMScript drives lab/vm (bash, curl, python3) against an in-process lab through a lab.env like
// the one lab/up writes.
func TestLabVMScript(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "python3"} {
		requireTool(t, tool)
	}
	h := startLab(t, 300*time.Second)
	state := t.TempDir()
	env := fmt.Sprintf("export VSPHERE_URL='%s'\nexport VSPHERE_USERNAME='%s'\nexport VSPHERE_PASSWORD='%s'\n"+
		"export VSPHERE_DC='DC0'\nexport VSPHERE_CA_CERT='%s'\nexport VCSIM_CONTROL_URL='%s'\n",
		h.lab.SDKURL, testUser, strings.ReplaceAll(testPassword, `'`, `'\''`), h.c.caFile, h.lab.ControlURL)
	if err := os.WriteFile(filepath.Join(state, "lab.env"), []byte(env), 0o600); err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs("../vm")
	if err != nil {
		t.Fatal(err)
	}
	labVM := func(args ...string) (string, error) {
		cmd := exec.Command(script, args...)
		cmd.Env = append(os.Environ(), "VM_IMPORT_LAB_STATE="+state)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if err != nil {
			return stderr.String(), err
		}
		return stdout.String(), nil
	}
	dir := t.TempDir()
	d0 := makeVMDK(t, dir, "a", 2, 64<<10, "streamOptimized")
	d1 := makeVMDK(t, dir, "b", 2, 64<<10, "monolithicSparse")
	out, err := labVM("create", "sh01", "--cpus", "4", "--cores-per-socket", "2", "--memory-mb", "2048", "--firmware", "efi",
		"--secure-boot", "--vtpm", "--disk", "pvscsi:"+d0, "--disk", "nvme@1:2:"+d1, "--disk", "ide,capacity=4096:"+d1,
		"--nic", "e1000:VM Network:00:50:56:aa:bb:01", "--nic", "vmxnet3:DC0_DVPG0",
		"--power", "on", "--tools", "running", "--folder", "sh/nested", "--guest-id", "otherGuest64", "--hw-version", "vmx-17",
		"--lease-timeout", "7", "--export-init-ms", "5", "--export-nvram")
	if err != nil {
		t.Fatalf("lab/vm create: %v\n%s", err, out)
	}
	if !strings.Contains(out, "/DC0/vm/sh/nested/sh01") {
		t.Fatalf("lab/vm create printed %q", out)
	}
	out, err = labVM("show", "sh01")
	if err != nil {
		t.Fatalf("lab/vm show: %v\n%s", err, out)
	}
	var v VMView
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatal(err)
	}
	if v.NumCPU != 4 || v.CoresPerSock != 2 || v.MemoryMB != 2048 || !v.SecureBoot || !v.TPM || v.HWVersion != "vmx-17" ||
		v.PowerState != "poweredOn" || v.ToolsRunning != "guestToolsRunning" || len(v.Disks) != 3 || len(v.NICs) != 2 ||
		v.Disks[1].Controller != "VirtualNVMEController" || v.Disks[1].BusNumber != 1 || v.Disks[1].UnitNumber != 2 ||
		v.Disks[2].CapacityBytes != 4096 || v.NICs[0].MAC != "00:50:56:aa:bb:01" || v.NICs[0].Network != "VM Network" ||
		v.NICs[1].AddressType != "generated" || v.NICs[1].PortgroupKey == "" || v.LeaseTimeoutSeconds != 7 || v.ExportInitMillis != 5 || !v.ExportNvram {
		t.Fatalf("VM made by lab/vm: %+v", v)
	}
	if out, err := labVM("create", "sh02", "--disk", "floppy:"+d0); err == nil || !strings.Contains(out, "bus \"floppy\"") {
		t.Fatalf("bad --disk: %v %q", err, out)
	}
	if out, err := labVM("fault", "cut", "512", "--times", "2", "--vm", "sh01"); err != nil {
		t.Fatalf("lab/vm fault cut: %v %s", err, out)
	}
	out, _ = labVM("fault", "list")
	if !strings.Contains(out, `"cutAfterBytes": 512`) {
		t.Fatalf("fault list: %s", out)
	}
	if out, err := labVM("fault", "clear"); err != nil {
		t.Fatalf("fault clear: %v %s", err, out)
	}
	if out, err := labVM("network", "create", "sh-pg", "--distributed", "--vlan", "12"); err != nil || !strings.Contains(out, "dvportgroup-") {
		t.Fatalf("network create: %v %s", err, out)
	}
	if out, err := labVM("network", "create", "sh-nsx", "--opaque", "--opaque-id", "ls-42"); err != nil ||
		!strings.Contains(out, `"opaqueNetworkId": "ls-42"`) || !strings.Contains(out, "nsx.LogicalSwitch") {
		t.Fatalf("opaque network create: %v %s", err, out)
	}
	if out, err := labVM("leases", "--json"); err != nil || strings.TrimSpace(out) != "[]" {
		t.Fatalf("leases: %v %q", err, out)
	}
	if out, err := labVM("list"); err != nil || !strings.Contains(out, "sh01") || !strings.Contains(out, "DC0_H0_VM0") {
		t.Fatalf("list: %v %s", err, out)
	}
	if out, err := labVM("delete", "sh01"); err != nil {
		t.Fatalf("delete: %v %s", err, out)
	}
	if out, err := labVM("show", "sh01"); err == nil || !strings.Contains(out, "404") {
		t.Fatalf("show after delete: %v %s", err, out)
	}
}

// TestPerVMLeaseSettings: a VM's own leaseTimeoutSeconds and exportInitMillis beat the lab's defaults.
func TestPerVMLeaseSettings(t *testing.T) {
	h := startLab(t, 300*time.Second)
	ctx := context.Background()
	d := makeVMDK(t, t.TempDir(), "a", 2, 64<<10, "streamOptimized")
	v := h.createVM(VMSpec{Name: "slow01", LeaseTimeoutSeconds: 1, ExportInitMillis: 400, Disks: []DiskSpec{{Bus: "pvscsi", Path: d}}})
	vc := h.mustLogin()
	lease, err := exportVM(ctx, vc, types.ManagedObjectReference{Type: "VirtualMachine", Value: v.MoID})
	if err != nil {
		t.Fatal(err)
	}
	if st := leaseState(t, vc, lease); st.State != types.HttpNfcLeaseStateInitializing || st.Info != nil {
		t.Fatalf("new lease: state %s info %v, want initializing without info", st.State, st.Info)
	}
	wantFault(t, lease.Progress(ctx, 0), &types.InvalidState{}, "Progress while initializing")
	info, err := lease.Wait(ctx, nil)
	if err != nil || info.LeaseTimeout != 1 || len(info.DeviceUrl) != 1 {
		t.Fatalf("after initializing: %+v %v", info, err)
	}
	if resp, _, err := h.get(info.DeviceUrl[0].Url, nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET when ready: %v %v", resp, err)
	}
	time.Sleep(1500 * time.Millisecond)
	if st := leaseState(t, vc, lease); st.State != types.HttpNfcLeaseStateError {
		t.Fatalf("1.5 s after ready without progress: %s, want error", st.State)
	}
	if rec := h.lease(lease.Reference().Value); !rec.Expired || rec.LeaseTimeout != 1 {
		t.Fatalf("recording: %+v", rec)
	}
	var e map[string]string
	if st := h.control("POST", "/vms", VMSpec{Name: "slow02", LeaseTimeoutSeconds: -1}, &e); st != http.StatusBadRequest {
		t.Fatalf("negative leaseTimeoutSeconds: %d %v", st, e)
	}
}

// TestDescriptorDiskCopiesExtents: a descriptor-only VMDK (monolithicFlat) takes its capacity from the
// extent lines, and its extent travels into the VM's directory next to the descriptor.
func TestDescriptorDiskCopiesExtents(t *testing.T) {
	h := startLab(t, 300*time.Second)
	requireTool(t, "qemu-img")
	dir := t.TempDir()
	desc := filepath.Join(dir, "flat.vmdk")
	runTool(t, "qemu-img", "create", "-f", "vmdk", "-o", "subformat=monolithicFlat", desc, "3M")
	v := h.createVM(VMSpec{Name: "flat01", Disks: []DiskSpec{{Bus: "lsilogicsas", Path: desc}}})
	if len(v.Disks) != 1 || v.Disks[0].CapacityBytes != 3<<20 || v.Disks[0].Controller != "VirtualLsiLogicSASController" {
		t.Fatalf("disks: %+v", v.Disks)
	}
	vmDir := filepath.Dir(v.Disks[0].LocalPath)
	st, err := os.Stat(filepath.Join(vmDir, "flat-flat.vmdk"))
	if err != nil || st.Size() != 3<<20 {
		t.Fatalf("extent next to the descriptor: %v %v", st, err)
	}
	if got, want := sha256File(t, v.Disks[0].LocalPath), sha256File(t, desc); got != want {
		t.Fatal("descriptor copy differs from the source")
	}
}

func TestESXModeIsAStandaloneHostWithStarHostLeases(t *testing.T) {
	h := startLabWith(t, Config{LeaseTimeout: 300 * time.Second, ESX: true, NFCStarHost: true})
	ctx := context.Background()
	if h.lab.Datacenter != "ha-datacenter" || h.lab.Host == "" {
		t.Fatalf("ESX lab datacenter %q host %q", h.lab.Datacenter, h.lab.Host)
	}
	vc := h.mustLogin()
	if about := vc.ServiceContent.About; about.ApiType != "HostAgent" {
		t.Fatalf("apiType %q, want HostAgent", about.ApiType)
	}
	dir := t.TempDir()
	d := makeVMDK(t, dir, "esx", 4, 512<<10, "streamOptimized")
	if st := h.control("POST", "/vms", VMSpec{Name: "esx00", Folder: "f"}, nil); st != http.StatusBadRequest {
		t.Fatalf("VM in a folder of a standalone ESXi: %d, want 400", st)
	}
	v := h.createVM(VMSpec{Name: "esx01", Disks: []DiskSpec{{Bus: "pvscsi", Path: d}},
		NICs: []NICSpec{{Type: "vmxnet3", Network: "VM Network"}}})
	if v.InventoryPath != "/ha-datacenter/vm/esx01" {
		t.Fatalf("inventory path %q", v.InventoryPath)
	}
	found, err := object.NewSearchIndex(vc).FindByInventoryPath(ctx, "ha-datacenter/vm/esx01")
	if err != nil || found == nil || found.Reference().Value != v.MoID {
		t.Fatalf("FindByInventoryPath: %v, %v", found, err)
	}
	lease, err := exportVM(ctx, vc, found.Reference())
	if err != nil {
		t.Fatal(err)
	}
	li, err := lease.Wait(ctx, nil)
	if err != nil || len(li.DeviceUrl) != 1 || !strings.HasPrefix(li.DeviceUrl[0].Url, "https://*/nfc/") {
		t.Fatalf("lease info %+v, %v", li, err)
	}
	// A client puts the host it connected to in place of the star.
	u := strings.Replace(li.DeviceUrl[0].Url, "*", h.lab.SDKURL.Host, 1)
	resp, body, err := h.get(u, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %v %v", u, resp, err)
	}
	if got := sha256.Sum256(body); hex.EncodeToString(got[:]) != sha256File(t, d) {
		t.Fatal("disk served by the ESX lab differs from its source")
	}
	if err := lease.Complete(ctx); err != nil {
		t.Fatal(err)
	}
	// Standard port groups go on the one host; an ESXi has no distributed switch.
	var nv NetworkView
	if st := h.control("POST", "/networks", NetworkSpec{Name: "esx-pg", Kind: "standard"}, &nv); st != http.StatusCreated || nv.Kind != "standard" {
		t.Fatalf("standard port group on ESX: %d %+v", st, nv)
	}
	if st := h.control("POST", "/networks", NetworkSpec{Name: "esx-dvpg", Kind: "distributed"}, nil); st != http.StatusBadRequest {
		t.Fatalf("distributed port group on ESX: %d, want 400", st)
	}
}

func TestOpaqueNetworkNICs(t *testing.T) {
	h := startLab(t, 300*time.Second)
	ctx := context.Background()
	const id = "6f0c7f5e-3d3a-4c55-9b1e-0a1b2c3d4e5f"
	var nv NetworkView
	if st := h.control("POST", "/networks", NetworkSpec{Name: "nsx-seg-web", Kind: "opaque", OpaqueNetworkID: id}, &nv); st != http.StatusCreated {
		t.Fatalf("create opaque network: %d", st)
	}
	if nv.Kind != "opaque" || nv.OpaqueNetworkID != id || nv.OpaqueNetworkType != "nsx.LogicalSwitch" || nv.MoID == "" {
		t.Fatalf("opaque network view %+v", nv)
	}
	if st := h.control("POST", "/networks", NetworkSpec{Name: "pg-x", Kind: "standard", OpaqueNetworkID: id}, nil); st != http.StatusBadRequest {
		t.Fatalf("opaque id on a standard port group: %d, want 400", st)
	}
	v := h.createVM(VMSpec{Name: "nsx01", NICs: []NICSpec{
		{Type: "vmxnet3", Network: "nsx-seg-web", MAC: "00:50:56:aa:bb:11"},
		{Type: "e1000", Network: "DC0_DVPG0", MAC: "00:50:56:aa:bb:12"},
	}})
	if len(v.NICs) != 2 || v.NICs[0].Network != "nsx-seg-web" || v.NICs[0].OpaqueNetworkID != id ||
		v.NICs[0].OpaqueNetworkType != "nsx.LogicalSwitch" || v.NICs[1].Network != "DC0_DVPG0" {
		t.Fatalf("NIC views %+v", v.NICs)
	}

	vc := h.mustLogin()
	var vm mo.VirtualMachine
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: v.MoID}
	if err := property.DefaultCollector(vc).RetrieveOne(ctx, ref, []string{"config.hardware.device", "network"}, &vm); err != nil {
		t.Fatal(err)
	}
	nics := object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualEthernetCard)(nil))
	b, ok := nics[0].GetVirtualDevice().Backing.(*types.VirtualEthernetCardOpaqueNetworkBackingInfo)
	if !ok || b.OpaqueNetworkId != id || b.OpaqueNetworkType != "nsx.LogicalSwitch" {
		t.Fatalf("first NIC backing %#v", nics[0].GetVirtualDevice().Backing)
	}
	if _, ok := nics[1].GetVirtualDevice().Backing.(*types.VirtualEthernetCardDistributedVirtualPortBackingInfo); !ok {
		t.Fatalf("second NIC backing %#v", nics[1].GetVirtualDevice().Backing)
	}
	want := map[string]bool{"OpaqueNetwork:" + nv.MoID: true}
	for _, n := range vm.Network {
		delete(want, n.Type+":"+n.Value)
		if n.Value == "" || (n.Type == "Network") {
			t.Fatalf("VM network list %v still has the placeholder or an empty reference", vm.Network)
		}
	}
	if len(want) != 0 || len(vm.Network) != 2 {
		t.Fatalf("VM network list %v, want the opaque network and the port group", vm.Network)
	}
	// A client finds the network by its id among the datacenter's networks.
	var on mo.OpaqueNetwork
	if err := property.DefaultCollector(vc).RetrieveOne(ctx, types.ManagedObjectReference{Type: "OpaqueNetwork", Value: nv.MoID}, []string{"name", "summary"}, &on); err != nil {
		t.Fatal(err)
	}
	if sum, ok := on.Summary.(*types.OpaqueNetworkSummary); !ok || on.Name != "nsx-seg-web" || sum.OpaqueNetworkId != id {
		t.Fatalf("opaque network %s %#v", on.Name, on.Summary)
	}
}

func TestRenameHostKeepsItsVMsAndTakesNewOnes(t *testing.T) {
	h := startLab(t, 300*time.Second)
	d := makeVMDK(t, t.TempDir(), "a", 1, 1<<20, "streamOptimized")
	h.createVM(VMSpec{Name: "before01", Host: "DC0_C0_H1", Disks: []DiskSpec{{Bus: "pvscsi", Path: d}}})
	if code := h.control("PUT", "/hosts/DC0_C0_H1", map[string]any{"name": "esx1.lab.test"}, nil); code != http.StatusOK {
		t.Fatalf("PUT /hosts/DC0_C0_H1: %d", code)
	}
	h.createVM(VMSpec{Name: "after01", Host: "esx1.lab.test", Disks: []DiskSpec{{Bus: "pvscsi", Path: d}}})
	if code := h.control("PUT", "/hosts/DC0_C0_H1", map[string]any{"name": "again"}, nil); code != http.StatusBadRequest {
		t.Fatalf("PUT under the old name: %d, want 400", code)
	}
	if code := h.control("PUT", "/hosts/esx1.lab.test", map[string]any{"name": ""}, nil); code != http.StatusBadRequest {
		t.Fatalf("PUT an empty name: %d, want 400", code)
	}
	ctx := context.Background()
	finder := find.NewFinder(h.mustLogin(), false)
	dc, err := finder.Datacenter(ctx, "DC0")
	if err != nil {
		t.Fatal(err)
	}
	finder.SetDatacenter(dc)
	host, err := finder.HostSystem(ctx, "esx1.lab.test")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"before01", "after01"} {
		vm, err := finder.VirtualMachine(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		on, err := vm.HostSystem(ctx)
		if err != nil || on.Reference() != host.Reference() {
			t.Fatalf("%s runs on %v (%v), want %v", name, on, err, host.Reference())
		}
	}
}

func TestRawDeviceMappingAndUSBDisks(t *testing.T) {
	h := startLab(t, 300*time.Second)
	ctx := context.Background()
	dir := t.TempDir()
	disk := makeVMDK(t, dir, "lun.vmdk", 1, 4096, "streamOptimized")
	v := h.createVM(VMSpec{Name: "rdm01", Disks: []DiskSpec{
		{Bus: "lsilogic", Path: disk, RDM: "physicalMode"},
		{Bus: "lsilogic", Path: disk, RDM: "virtualMode"},
		{Bus: "lsilogic", Path: disk},
		{Bus: "usb", Path: disk},
	}})
	if st := h.control("POST", "/vms", VMSpec{Name: "rdm02", Disks: []DiskSpec{{Bus: "lsilogic", Path: disk, RDM: "passthrough"}}}, nil); st != http.StatusBadRequest {
		t.Fatalf("unknown compatibility mode: %d, want 400", st)
	}
	var vm mo.VirtualMachine
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: v.MoID}
	if err := property.DefaultCollector(h.mustLogin()).RetrieveOne(ctx, ref, []string{"config.hardware.device"}, &vm); err != nil {
		t.Fatal(err)
	}
	disks := object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil))
	if len(disks) != 4 {
		t.Fatalf("%d disks, want 4", len(disks))
	}
	usb := object.VirtualDeviceList(vm.Config.Hardware.Device).FindByKey(disks[3].GetVirtualDevice().ControllerKey)
	if _, ok := usb.(*types.VirtualUSBXHCIController); !ok {
		t.Fatalf("fourth disk's controller %#v, want USB xHCI", usb)
	}
	for i, want := range []string{"physicalMode", "virtualMode"} {
		b, ok := disks[i].GetVirtualDevice().Backing.(*types.VirtualDiskRawDiskMappingVer1BackingInfo)
		if !ok || b.CompatibilityMode != want || b.LunUuid == "" || b.DeviceName == "" {
			t.Fatalf("disk %d backing %#v, want an RDM in %s", i, disks[i].GetVirtualDevice().Backing, want)
		}
	}
	if _, ok := disks[2].GetVirtualDevice().Backing.(*types.VirtualDiskFlatVer2BackingInfo); !ok {
		t.Fatalf("plain disk backing %#v", disks[2].GetVirtualDevice().Backing)
	}
}
