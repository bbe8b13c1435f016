// The lab server: govmomi's VPX simulator model behind our TLS certificate and credentials, with the
// methods vcsim lacks or gets wrong for migration tests (ExportVm, ShutdownGuest without tools) swapped
// in per call, and the /lab control API mounted on the same listener.
package main

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	// defaultDatastore is what both simulator.VPX() and simulator.ESX() create; the inventory tool places
	// every lab VM there.
	defaultDatastore = "LocalDS_0"
	// vpxDatacenter and vpxHost are simulator.VPX()'s datacenter and standalone host: the host's resource
	// pool takes lab VMs unless a spec names another host.
	vpxDatacenter = "DC0"
	vpxHost       = "DC0_H0"
	// esxDatacenter is the one datacenter a standalone ESXi has.
	esxDatacenter = "ha-datacenter"
	// controlPrefix is where the lab's own HTTP API lives, next to /sdk and /nfc on the same port.
	controlPrefix = "/lab/"
)

// modelCreateMu serialises simulator model creation: it writes package-level state (the license
// manager's), which races when tests start two labs at once.
var modelCreateMu sync.Mutex

// Config is everything the command line can set.
type Config struct {
	Listen       string // host:port, port 0 picks a free one
	CertFile     string
	KeyFile      string
	Username     string
	Password     string
	LeaseTimeout time.Duration // HttpNfcLeaseInfo.leaseTimeout; whole seconds
	NFCStarHost  bool          // device URLs say https://*/nfc/... like a lease taken directly from ESXi
	ESX          bool          // serve a standalone ESXi (simulator.ESX()) instead of a vCenter
}

// Lab is a running simulator with the lab extensions.
type Lab struct {
	cfg        Config
	model      *simulator.Model
	server     *simulator.Server
	client     *vim25.Client // our own SOAP session: inventory changes go through the model's own methods
	thumbprint string        // SHA-1 of our certificate, as HttpNfcLeaseDeviceUrl.sslThumbprint

	SDKURL        *url.URL // https://127.0.0.1:PORT/sdk, without credentials
	ControlURL    *url.URL // https://127.0.0.1:PORT/lab
	DatastoreRoot string   // local directory backing LocalDS_0
	Datacenter    string   // where lab VMs go: DC0, or ha-datacenter in ESX mode
	Host          string   // the host whose resource pool takes lab VMs by default

	mu     sync.Mutex
	leases []*exportLease          // every lease ever handed out, oldest first; guarded by mu
	byTick map[string]*exportLease // NFC ticket -> lease; guarded by mu
	faults []*cutFault             // pending download faults; guarded by mu
	// throttles caps disk download speed by VM name, in bytes per second; guarded by mu.
	throttles map[string]int64
	tools     map[string]bool // VM moid -> tools run when the VM is on; guarded by mu
	// exportOpts are per-VM lease settings by VM moid; guarded by mu.
	exportOpts map[string]exportOptions
	vmLock     sync.Mutex // serialises inventory shaping (folder creation, VM directories)
	closed     bool
}

// exportOptions are a VM's own export-lease settings (VMSpec.LeaseTimeoutSeconds, ExportInitMillis).
type exportOptions struct {
	LeaseTimeout time.Duration // 0: the lab's -lease-timeout
	InitDelay    time.Duration // how long a new lease stays "initializing"; 0: ready at once
	Nvram        bool          // list the VM's NVRAM file as a non-disk device URL
}

// Start builds the VPX (or, with cfg.ESX, the ESX) model and serves it.
func Start(cfg Config) (*Lab, error) {
	if cfg.Username == "" || cfg.Password == "" {
		return nil, errors.New("both -username and -password must be non-empty (vcsim would otherwise accept any login)")
	}
	if cfg.LeaseTimeout < time.Second {
		return nil, fmt.Errorf("lease timeout %s is below 1s", cfg.LeaseTimeout)
	}
	cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s and key %s: %w", cfg.CertFile, cfg.KeyFile, err)
	}
	sum := sha1.Sum(cert.Certificate[0])
	hexed := make([]string, len(sum))
	for i, b := range sum {
		hexed[i] = fmt.Sprintf("%02X", b)
	}

	model, dcName, hostName := simulator.VPX(), vpxDatacenter, vpxHost
	if cfg.ESX {
		model, dcName = simulator.ESX(), esxDatacenter
	}
	modelCreateMu.Lock()
	err = model.Create()
	modelCreateMu.Unlock()
	if err != nil {
		model.Remove()
		return nil, fmt.Errorf("create simulator inventory: %w", err)
	}
	l := &Lab{
		cfg:        cfg,
		model:      model,
		thumbprint: strings.Join(hexed, ":"),
		byTick:     map[string]*exportLease{},
		tools:      map[string]bool{},
		exportOpts: map[string]exportOptions{},
	}
	model.Service.Listen = &url.URL{Host: cfg.Listen, User: url.UserPassword(cfg.Username, cfg.Password)}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	// Our routes go on the mux before NewServer adds vcsim's; "/nfc/{ticket}/{file}" is more specific
	// than vcsim's "/nfc/", so ours wins and falls back to vcsim's handler for its own leases.
	mux := http.NewServeMux()
	mux.HandleFunc("/nfc/{ticket}/{file}", l.serveNFC)
	mux.Handle(controlPrefix, l.controlHandler())
	model.Service.ServeMux = mux
	model.Map().Handler = l.dispatch

	l.server = model.Service.NewServer()
	l.SDKURL = &url.URL{Scheme: l.server.URL.Scheme, Host: l.server.URL.Host, Path: l.server.URL.Path}
	l.ControlURL = &url.URL{Scheme: l.server.URL.Scheme, Host: l.server.URL.Host, Path: strings.TrimSuffix(controlPrefix, "/")}
	// Inventory shaping logs in over HTTPS like any client. vcsim's in-process transport would share one
	// process-wide session registry between labs (tests run several), and our per-session VM wrappers
	// would leak from one lab into the next.
	ctx := context.Background()
	sc := soap.NewClient(l.SDKURL, true) // loopback to ourselves: no need to verify our own certificate
	if l.client, err = vim25.NewClient(ctx, sc); err == nil {
		err = session.NewManager(l.client).Login(ctx, url.UserPassword(cfg.Username, cfg.Password))
	}
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("lab's own SOAP session: %w", err)
	}

	ds, ok := model.Map().Any("Datastore").(*simulator.Datastore)
	if !ok || ds.Name != defaultDatastore {
		l.Close()
		return nil, fmt.Errorf("simulator model has no datastore %s", defaultDatastore)
	}
	l.DatastoreRoot = ds.Summary.Url
	if cfg.ESX {
		// The one host of an ESXi is named after the machine (localhost.localdomain in the model).
		host, ok := model.Map().Any("HostSystem").(*simulator.HostSystem)
		if !ok {
			l.Close()
			return nil, errors.New("ESX simulator model has no host")
		}
		hostName = host.Name
	}
	l.Datacenter, l.Host = dcName, hostName
	return l, nil
}

// Close stops serving, ends every lease's transfers and removes the model's temporary directories.
func (l *Lab) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	for _, lease := range l.leases {
		lease.stopLocked()
	}
	l.mu.Unlock()
	if l.server != nil {
		l.server.Close()
	}
	l.model.Remove()
}

// lockCtx is a simulator context for changing objects outside a SOAP call (timers, the control API).
// Each use gets its own, so the simulator's per-context lock re-entrance never spans two of our goroutines.
func (l *Lab) lockCtx() *simulator.Context {
	m := l.model.Map()
	return &simulator.Context{Context: context.Background(), Map: m, Session: &simulator.Session{
		UserSession: types.UserSession{Key: "vcsim-lab", UserName: l.cfg.Username},
		Registry:    simulator.NewRegistry(),
		Map:         m,
	}}
}

// dispatch is the registry's per-call hook. The simulator resolves a call's target in the caller's
// session registry before the global one, so for the VirtualMachine methods we change we place a wrapper
// around the very same VM object (same moref, hence the same lock) in that session registry. Elsewhere
// the simulator type-asserts *simulator.VirtualMachine on the global registry, which stays untouched.
func (l *Lab) dispatch(ctx *simulator.Context, m *simulator.Method) (mo.Reference, types.BaseMethodFault) {
	if m.This.Type != "VirtualMachine" || ctx.Session == nil || ctx.Session.Registry == nil {
		return nil, nil
	}
	vm, ok := ctx.Map.Get(m.This).(*simulator.VirtualMachine)
	if !ok {
		// Destroyed VM: drop our wrapper so the caller gets ManagedObjectNotFound like everyone else.
		if ctx.Session.Registry.Get(m.This) != nil {
			ctx.Session.Registry.Remove(ctx, m.This)
		}
		return nil, nil
	}
	switch m.Name {
	case "ExportVm", "ShutdownGuest", "PowerOnVM_Task", "PowerOffVM_Task", "Destroy_Task":
		if w, ok := ctx.Session.Registry.Get(m.This).(*labVM); !ok || w.VirtualMachine != vm {
			ctx.Session.Registry.Put(&labVM{VirtualMachine: vm, lab: l})
		}
	}
	return nil, nil
}
