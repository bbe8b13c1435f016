// vcsim-lab: govmomi's vCenter simulator (VPX model, or with -esx a standalone ESXi) with ExportVm, realistic export leases, an inventory
// shaping API and transfer fault injection, for vm-import's tests. See lab/README.md for the contract.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
)

// readyInfo is the JSON written to -ready-file once the server accepts connections.
type readyInfo struct {
	URL           string `json:"url"`
	PID           int    `json:"pid"`
	DatastoreRoot string `json:"datastoreRoot"`
	Control       string `json:"control"`
	Datacenter    string `json:"datacenter"`
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "vcsim-lab: %v\n", err)
		stop()
		os.Exit(1)
	}
}

// run serves until ctx ends, then cleans up: the model's temporary directories and the ready file.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("vcsim-lab", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on; port 0 picks a free port")
	certFile := fs.String("tlscert", "", "PEM certificate (chain) to serve; required")
	keyFile := fs.String("tlskey", "", "PEM private key of -tlscert; required")
	username := fs.String("username", "", "the only user name that may log in; required")
	password := fs.String("password", "", "the only password that may log in; required")
	leaseTimeout := fs.Int("lease-timeout", 300, "seconds an export lease lives without HttpNfcLeaseProgress")
	readyFile := fs.String("ready-file", "", "write {url,pid,datastoreRoot,control} JSON here once serving; required")
	traceFile := fs.String("trace-file", "", "append every SOAP request and response to this file")
	starHost := fs.Bool("nfc-star-host", false, "device URLs use host '*' as when leasing directly from ESXi")
	esx := fs.Bool("esx", false, "be a standalone ESXi (datacenter ha-datacenter, apiType HostAgent) instead of a vCenter")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for name, v := range map[string]string{"-tlscert": *certFile, "-tlskey": *keyFile, "-ready-file": *readyFile} {
		if v == "" {
			return fmt.Errorf("%s is required", name)
		}
	}
	if *leaseTimeout < 1 {
		return fmt.Errorf("-lease-timeout %d must be at least 1 second", *leaseTimeout)
	}
	if *traceFile != "" {
		f, err := os.OpenFile(*traceFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("open -trace-file: %w", err)
		}
		defer f.Close()
		simulator.Trace, simulator.TraceFile = true, f
	}

	lab, err := Start(Config{
		Listen: *listen, CertFile: *certFile, KeyFile: *keyFile, Username: *username, Password: *password,
		LeaseTimeout: time.Duration(*leaseTimeout) * time.Second, NFCStarHost: *starHost, ESX: *esx,
	})
	if err != nil {
		return err
	}
	defer lab.Close()

	info := readyInfo{URL: lab.SDKURL.String(), PID: os.Getpid(), DatastoreRoot: lab.DatastoreRoot, Control: lab.ControlURL.String(), Datacenter: lab.Datacenter}
	if err := writeFileAtomic(*readyFile, info); err != nil {
		return err
	}
	defer os.Remove(*readyFile)
	log.Printf("vcsim-lab serving %s (control %s, datastore %s)", info.URL, info.Control, info.DatastoreRoot)
	<-ctx.Done()
	log.Printf("vcsim-lab stopping")
	return nil
}

func writeFileAtomic(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".ready-*")
	if err != nil {
		return fmt.Errorf("write -ready-file: %w", err)
	}
	_, werr := tmp.Write(append(data, '\n'))
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write -ready-file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write -ready-file: %w", err)
	}
	return nil
}
