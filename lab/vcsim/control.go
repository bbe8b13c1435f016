// The /lab control API: what tests and lab/vm use to shape the inventory, read what was done with each
// export lease, and inject transfer faults. Basic auth with the lab's own username and password.
package main

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/vmware/govmomi/vim25/types"
)

// maxControlBody bounds a control request body: a VM spec with the maximum disks and NICs is a few KiB.
const maxControlBody = 1 << 20

// cutFault makes a disk download stop after CutAfterBytes bytes and drop the connection.
type cutFault struct {
	CutAfterBytes int64  `json:"cutAfterBytes"`
	Times         int    `json:"times"` // downloads still to cut
	VM            string `json:"vm"`    // VM name, empty for any
	// CleanEnd ends the cut body as if it were whole (the chunked body's last chunk is sent)
	// instead of dropping the connection: what a proxy or a server-side failure can produce, and
	// what only the stream's own end proves incomplete.
	CleanEnd bool `json:"cleanEnd,omitempty"`
}

// takeFaultLocked consumes one use of the first fault matching vmName. Caller holds Lab.mu.
func (l *Lab) takeFaultLocked(vmName string) *cutFault {
	for i, f := range l.faults {
		if f.VM != "" && f.VM != vmName {
			continue
		}
		taken := *f
		f.Times--
		if f.Times <= 0 {
			l.faults = append(l.faults[:i], l.faults[i+1:]...)
		}
		return &taken
	}
	return nil
}

// LeaseRecord is one element of GET /lab/leases.
type LeaseRecord struct {
	ID            string            `json:"id"`     // HttpNfcLease moref value
	Ticket        string            `json:"ticket"` // the /nfc/<ticket>/ path element
	VM            LeaseVM           `json:"vm"`
	Created       time.Time         `json:"created"`
	State         string            `json:"state"` // initializing, ready, done or error
	LeaseTimeout  int               `json:"leaseTimeout"`
	ProgressCalls ProgressCalls     `json:"progressCalls"`
	Completed     bool              `json:"completed"`
	Aborted       bool              `json:"aborted"`
	AbortFault    string            `json:"abortFault,omitempty"` // fault type the client passed to Abort
	Expired       bool              `json:"expired"`
	BytesServed   map[string]int64  `json:"bytesServed"` // by targetId, summed over all GETs
	Downloads     map[string]int    `json:"downloads"`   // GET/HEAD requests by targetId
	Cuts          int               `json:"cuts"`        // downloads cut by an injected fault
	Files         []LeaseFileRecord `json:"files"`
}

// LeaseVM names the exported VM.
type LeaseVM struct {
	MoID string `json:"moid"`
	Name string `json:"name"`
}

// ProgressCalls counts HttpNfcLeaseProgress calls.
type ProgressCalls struct {
	Count       int   `json:"count"`
	LastPercent int32 `json:"lastPercent"`
}

// LeaseFileRecord is one device URL of the lease.
type LeaseFileRecord struct {
	TargetID string `json:"targetId"`
	Key      string `json:"key"`
	Path     string `json:"path"`
	Disk     bool   `json:"disk"`
}

// Leases snapshots the recording.
func (l *Lab) Leases() []LeaseRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]LeaseRecord, 0, len(l.leases))
	for _, e := range l.leases {
		r := LeaseRecord{
			ID: e.Self.Value, Ticket: e.ticket, VM: LeaseVM{MoID: e.vm.Value, Name: e.vmName},
			Created: e.created.UTC(), State: string(e.state), LeaseTimeout: int(e.timeout / time.Second),
			ProgressCalls: ProgressCalls{Count: e.progressCalls, LastPercent: e.lastPercent},
			Completed:     e.completed, Aborted: e.aborted, AbortFault: e.abortFault, Expired: e.expired,
			BytesServed: map[string]int64{}, Downloads: map[string]int{}, Cuts: e.cuts, Files: []LeaseFileRecord{},
		}
		for _, t := range e.order {
			r.BytesServed[t] = e.bytesServed[t]
			r.Downloads[t] = e.downloads[t]
			r.Files = append(r.Files, LeaseFileRecord{TargetID: t, Key: e.files[t].Key, Path: e.files[t].Path, Disk: e.files[t].Disk})
		}
		out = append(out, r)
	}
	return out
}

func (l *Lab) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /lab/leases", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, l.Leases()) })
	mux.HandleFunc("DELETE /lab/leases", func(w http.ResponseWriter, r *http.Request) {
		// Forget finished leases; ready ones stay, since their URLs and timers are live.
		l.mu.Lock()
		kept := l.leases[:0]
		for _, e := range l.leases {
			if e.state == types.HttpNfcLeaseStateReady {
				kept = append(kept, e)
			} else {
				delete(l.byTick, e.ticket)
			}
		}
		l.leases = kept
		l.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /lab/faults", func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		out := make([]cutFault, 0, len(l.faults))
		for _, f := range l.faults {
			out = append(out, *f)
		}
		l.mu.Unlock()
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST /lab/faults", func(w http.ResponseWriter, r *http.Request) {
		var f cutFault
		if !readJSON(w, r, &f) {
			return
		}
		if f.CutAfterBytes < 0 || f.Times < 1 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("cutAfterBytes must be >= 0 and times >= 1, got %d and %d", f.CutAfterBytes, f.Times))
			return
		}
		l.mu.Lock()
		l.faults = append(l.faults, &f)
		l.mu.Unlock()
		writeJSON(w, http.StatusCreated, f)
	})
	mux.HandleFunc("DELETE /lab/faults", func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		l.faults = nil
		l.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("PUT /lab/throttles/{vm}", func(w http.ResponseWriter, r *http.Request) {
		var t struct {
			BytesPerSecond int64 `json:"bytesPerSecond"`
		}
		if !readJSON(w, r, &t) {
			return
		}
		if t.BytesPerSecond < 1 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("bytesPerSecond must be >= 1, got %d", t.BytesPerSecond))
			return
		}
		l.mu.Lock()
		if l.throttles == nil {
			l.throttles = map[string]int64{}
		}
		l.throttles[r.PathValue("vm")] = t.BytesPerSecond
		l.mu.Unlock()
		writeJSON(w, http.StatusOK, t)
	})
	mux.HandleFunc("DELETE /lab/throttles/{vm}", func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		delete(l.throttles, r.PathValue("vm"))
		l.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("PUT /lab/hosts/{name}", func(w http.ResponseWriter, r *http.Request) {
		var h struct {
			Name string `json:"name"`
		}
		if !readJSON(w, r, &h) {
			return
		}
		if err := l.RenameHost(r.Context(), r.PathValue("name"), h.Name); err != nil {
			writeError(w, statusOf(err), err)
			return
		}
		writeJSON(w, http.StatusOK, h)
	})
	mux.HandleFunc("GET /lab/vms", func(w http.ResponseWriter, r *http.Request) {
		vms, err := l.ListVMs(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, vms)
	})
	mux.HandleFunc("GET /lab/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		vm, err := l.findVM(r.Context(), r.PathValue("name"))
		if err != nil {
			writeError(w, statusOf(err), fmt.Errorf("VM %q: %w", r.PathValue("name"), err))
			return
		}
		v, err := l.viewVM(r.Context(), vm.Reference())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
	mux.HandleFunc("POST /lab/vms", func(w http.ResponseWriter, r *http.Request) {
		var spec VMSpec
		if !readJSON(w, r, &spec) {
			return
		}
		v, err := l.CreateVM(r.Context(), spec)
		if err != nil {
			writeError(w, statusOf(err), err)
			return
		}
		writeJSON(w, http.StatusCreated, v)
	})
	mux.HandleFunc("DELETE /lab/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		if err := l.DeleteVM(r.Context(), r.PathValue("name")); err != nil {
			writeError(w, statusOf(err), fmt.Errorf("VM %q: %w", r.PathValue("name"), err))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /lab/networks", func(w http.ResponseWriter, r *http.Request) {
		nets, err := l.ListNetworks(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, nets)
	})
	mux.HandleFunc("POST /lab/networks", func(w http.ResponseWriter, r *http.Request) {
		var spec NetworkSpec
		if !readJSON(w, r, &spec) {
			return
		}
		n, err := l.CreateNetwork(r.Context(), spec)
		if err != nil {
			writeError(w, statusOf(err), err)
			return
		}
		writeJSON(w, http.StatusCreated, n)
	})

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(user), []byte(l.cfg.Username)) != 1 ||
			subtle.ConstantTimeCompare([]byte(pass), []byte(l.cfg.Password)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="vcsim-lab"`)
			writeError(w, http.StatusUnauthorized, errors.New("the control API needs basic auth with the lab username and password"))
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func statusOf(err error) int {
	var se *specError
	switch {
	case errors.As(err, &se):
		return http.StatusBadRequest
	case errors.Is(err, errNotFound):
		return http.StatusNotFound
	case errors.As(err, new(*conflictError)):
		return http.StatusConflict
	default:
		return http.StatusInternalServerError
	}
}

func readJSON(w http.ResponseWriter, r *http.Request, into any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxControlBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("request body: %w", err))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}
