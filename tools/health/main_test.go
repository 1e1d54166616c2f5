package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// The files the project publishes, as users install them.
const (
	argoScriptPath = "../../charts/ppio-operator/health/argocd-health.lua"
	fluxExprsPath  = "../../charts/ppio-operator/health/flux-health-check.yaml"
)

// want is one row of the health table: what each evaluator reports for a testdata object,
// and text the Argo CD message must contain.
type want struct {
	kstatus, argo, flux string
	argoMessage         string
}

// The acceptance table, one entry per testdata/*.json.
var table = map[string]want{
	// running, synced
	"running": {kstatus: "Current", argo: "Healthy", flux: "Current"},
	// starting: a transitional state (Reconciling=True, reason Transitioning)
	"starting": {kstatus: "InProgress", argo: "Progressing", flux: "InProgress", argoMessage: "starting"},
	// exited, stopped on purpose. Plain kstatus has no Reconciling or Stalled to go by
	// (both False), so it falls back to the Ready condition and reads Ready=False as
	// InProgress: a tool that waits for Current with plain kstatus waits for ever on a stopped
	// instance. The published Argo CD script and Flux expressions read it as fine.
	"exited": {kstatus: "InProgress", argo: "Suspended", flux: "Current", argoMessage: "exited"},
	// gone: status.state NotFound, Stalled=True InstanceNotFound
	"gone": {kstatus: "Failed", argo: "Degraded", flux: "Failed", argoMessage: "does not exist"},
	// PPIO failing: 503 for minutes, Synced=False ApiUnavailable, Reconciling=True, Ready kept
	// True. Reconciling=True keeps kstatus and Flux at InProgress, never Current.
	"ppio-failing": {kstatus: "InProgress", argo: "Degraded", flux: "InProgress", argoMessage: "HTTP 503"},
	// suspended after running (Ready kept True). Plain kstatus: Reconciling and Stalled are
	// False, so again the Ready condition decides, and Ready=True gives Current. What plain
	// kstatus says of a suspended instance is therefore the kept Ready: see suspended-exited
	// and suspended-never-observed.
	"suspended": {kstatus: "Current", argo: "Suspended", flux: "Current", argoMessage: "spec.suspend"},
	// never observed: no status at all yet. Plain kstatus finds no conditions and no
	// status.observedGeneration, and its last rule is that such a resource is Current
	// ("Resource is current"), not InProgress. Flux's CEL cannot test whether the top-level
	// variable status exists: any expression that mentions status fails to evaluate, which
	// Flux reports as Unknown (its health check keeps waiting, as for InProgress, but it is not
	// InProgress). Only Argo CD's script can say Progressing. See the report of this module.
	"never-observed": {kstatus: "Current", argo: "Progressing", flux: "Unknown"},

	// Beyond the table.
	// Suspended while stopped (Ready kept False): plain kstatus says InProgress.
	"suspended-exited": {kstatus: "InProgress", argo: "Suspended", flux: "Current", argoMessage: "spec.suspend"},
	// Suspended from creation (Ready=Unknown NotObserved): plain kstatus says InProgress.
	"suspended-never-observed": {kstatus: "InProgress", argo: "Suspended", flux: "Current", argoMessage: "spec.suspend"},
	// The first poll failed before any observation (Ready=Unknown, Reconciling=True).
	"not-observed-failing": {kstatus: "InProgress", argo: "Degraded", flux: "InProgress", argoMessage: "could not connect"},
	// Credentials rejected: Stalled=True while Ready is kept True.
	"unauthorized": {kstatus: "Failed", argo: "Degraded", flux: "Failed", argoMessage: "HTTP 401"},
	// Removed in PPIO (a stable state, Ready=False, nothing stalled): kstatus reads Ready=False.
	"removed": {kstatus: "InProgress", argo: "Degraded", flux: "Failed", argoMessage: "removed"},
	// The spec changed and the operator has not answered it yet.
	"generation-behind": {kstatus: "InProgress", argo: "Progressing", flux: "InProgress", argoMessage: "generation 3"},
}

func newTestEvaluator(t *testing.T, openLibs bool) *Evaluator {
	t.Helper()
	script, err := os.ReadFile(argoScriptPath)
	if err != nil {
		t.Fatal(err)
	}
	exprs, err := os.ReadFile(fluxExprsPath)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := NewEvaluator(script, exprs, openLibs)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func testdataNames(t *testing.T) []string {
	t.Helper()
	paths, err := filepath.Glob("testdata/*.json")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range paths {
		names = append(names, strings.TrimSuffix(filepath.Base(p), ".json"))
	}
	sort.Strings(names)
	return names
}

func readObject(t *testing.T, name string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := DecodeObjects(data)
	if err != nil || len(objs) != 1 {
		t.Fatalf("%s: %v (%d objects)", name, err, len(objs))
	}
	return objs[0]
}

func TestTableCoversTestdata(t *testing.T) {
	names := testdataNames(t)
	seen := map[string]bool{}
	for _, n := range names {
		seen[n] = true
		if _, ok := table[n]; !ok {
			t.Errorf("testdata/%s.json has no row in the table", n)
		}
	}
	for n := range table {
		if !seen[n] {
			t.Errorf("the table names %s, but testdata/%s.json is missing", n, n)
		}
	}
}

func TestHealthTable(t *testing.T) {
	for _, openLibs := range []bool{false, true} {
		ev := newTestEvaluator(t, openLibs)
		for _, name := range testdataNames(t) {
			w, ok := table[name]
			if !ok {
				continue
			}
			r, err := ev.Evaluate(readObject(t, name))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			got := want{kstatus: r.Kstatus, argo: r.Argo, flux: r.Flux}
			exp := want{kstatus: w.kstatus, argo: w.argo, flux: w.flux}
			if got != exp {
				t.Errorf("%s (openLibs=%v): got kstatus/argo/flux %s/%s/%s, want %s/%s/%s\n%+v",
					name, openLibs, got.kstatus, got.argo, got.flux, exp.kstatus, exp.argo, exp.flux, r)
			}
			if r.ArgoMessage == "" || !strings.Contains(r.ArgoMessage, w.argoMessage) {
				t.Errorf("%s: Argo CD message %q, want one containing %q", name, r.ArgoMessage, w.argoMessage)
			}
			if r.FluxMessage == "" {
				t.Errorf("%s: empty Flux message", name)
			}
			if w.kstatus == "Failed" && r.KstatusMessage == "" {
				t.Errorf("%s: empty kstatus message", name)
			}
		}
	}
}

// Objects the operator never writes, or has only begun to: the script and the expressions
// must not fail on them.
func TestPartialStatus(t *testing.T) {
	ev := newTestEvaluator(t, false)
	obj := func(status string) map[string]any {
		js := `{"apiVersion":"gpus.ppio.com/v1alpha1","kind":"PpioInstance",
			"metadata":{"name":"p","namespace":"ml","generation":1},"spec":{"instanceId":"x1"}`
		if status != "" {
			js += `,"status":` + status
		}
		objs, err := DecodeObjects([]byte(js + "}"))
		if err != nil {
			t.Fatal(err)
		}
		return objs[0]
	}
	for _, c := range []struct {
		status, argo, flux string
	}{
		{`{}`, "Progressing", "InProgress"},
		{`null`, "Progressing", "InProgress"},
		{`{"conditions":[]}`, "Progressing", "InProgress"},
		{`{"state":"running"}`, "Progressing", "InProgress"},
		{`{"observedGeneration":1,"conditions":[{"type":"Synced","status":"True","reason":"Observed","message":"m","lastTransitionTime":"2026-11-25T08:03:17Z"}]}`,
			"Progressing", "InProgress"},
	} {
		r, err := ev.Evaluate(obj(c.status))
		if err != nil {
			t.Fatalf("status %s: %v", c.status, err)
		}
		if r.Argo != c.argo || r.Flux != c.flux {
			t.Errorf("status %s: got argo %s, flux %s (%s); want %s, %s", c.status, r.Argo, r.Flux, r.FluxMessage, c.argo, c.flux)
		}
	}
	// Argo CD answers before any script for an object being deleted.
	o := readObject(t, "running")
	o["metadata"].(map[string]any)["deletionTimestamp"] = "2026-11-25T09:00:00Z"
	r, err := ev.Evaluate(o)
	if err != nil {
		t.Fatal(err)
	}
	if r.Argo != "Progressing" || r.Kstatus != "Terminating" {
		t.Errorf("being deleted: got %+v", r)
	}
}

func runTool(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

// The program reads a list as kubectl get -o json prints it and prints one line per item.
func TestRunList(t *testing.T) {
	names := testdataNames(t)
	var items []json.RawMessage
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join("testdata", n+".json"))
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, data)
	}
	list, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items, "metadata": map[string]any{}})
	if err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runTool(t, string(list), "--argo-script", argoScriptPath, "--flux-exprs", fluxExprsPath)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(names) {
		t.Fatalf("%d lines for %d items:\n%s", len(lines), len(names), out)
	}
	for i, line := range lines {
		var r map[string]string
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %d: %v: %s", i, err, line)
		}
		for _, k := range []string{"name", "kstatus", "kstatusMessage", "argo", "argoMessage", "flux", "fluxMessage"} {
			if _, ok := r[k]; !ok {
				t.Errorf("line %d lacks %q: %s", i, k, line)
			}
		}
		w := table[names[i]]
		if r["kstatus"] != w.kstatus || r["argo"] != w.argo || r["flux"] != w.flux {
			t.Errorf("%s: %s", names[i], line)
		}
	}
	// An empty list prints nothing.
	if code, out, errOut := runTool(t, `{"kind":"List","items":[]}`, "--argo-script", argoScriptPath, "--flux-exprs", fluxExprsPath); code != 0 || out != "" {
		t.Errorf("empty list: exit %d, %q, %q", code, out, errOut)
	}
}

func TestRunErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	running, err := os.ReadFile("testdata/running.json")
	if err != nil {
		t.Fatal(err)
	}
	good := []string{"--argo-script", argoScriptPath, "--flux-exprs", fluxExprsPath}
	for _, c := range []struct {
		name   string
		stdin  string
		args   []string
		code   int
		stderr string
	}{
		{"no flags", string(running), nil, 2, "usage"},
		{"bad JSON", `{"apiVersion":`, good, 1, "invalid JSON"},
		{"no input", "", good, 1, "no input"},
		{"not an object", `[1,2]`, good, 1, "invalid JSON"},
		{"bad items", `{"items":[1]}`, good, 1, "items[0]"},
		{"missing script", string(running), []string{"--argo-script", filepath.Join(dir, "none.lua"), "--flux-exprs", fluxExprsPath}, 1, "none.lua"},
		{"script syntax error", string(running), []string{"--argo-script", write("syntax.lua", "hs = {\nreturn hs"), "--flux-exprs", fluxExprsPath}, 1, "argo script"},
		{"script runtime error", string(running), []string{"--argo-script", write("runtime.lua", "return obj.status.nothing.deeper"), "--flux-exprs", fluxExprsPath}, 1, "argo script"},
		{"script uses a closed library", string(running), []string{"--argo-script", write("lib.lua", `return {status = string.upper("healthy")}`), "--flux-exprs", fluxExprsPath}, 1, "argo script"},
		{"script returns a string", string(running), []string{"--argo-script", write("str.lua", `return "Healthy"`), "--flux-exprs", fluxExprsPath}, 1, "expect table output"},
		{"expressions do not parse", string(running), []string{"--argo-script", argoScriptPath, "--flux-exprs", write("bad.yaml", "- apiVersion: gpus.ppio.com/v1alpha1\n  kind: PpioInstance\n  current: \"status.conditions.exists(c,\"\n")}, 1, "flux expressions"},
		{"expressions without current", string(running), []string{"--argo-script", argoScriptPath, "--flux-exprs", write("nocurrent.yaml", "- apiVersion: gpus.ppio.com/v1alpha1\n  kind: PpioInstance\n  failed: \"true\"\n")}, 1, "Current not specified"},
		{"expressions not a list", string(running), []string{"--argo-script", argoScriptPath, "--flux-exprs", write("map.yaml", "apiVersion: x\n")}, 1, "YAML list"},
	} {
		code, _, errOut := runTool(t, c.stdin, c.args...)
		if code != c.code || !strings.Contains(errOut, c.stderr) {
			t.Errorf("%s: exit %d, stderr %q; want exit %d and %q", c.name, code, errOut, c.code, c.stderr)
		}
	}
	// Argo CD turns a status outside its health codes into Unknown; that is not an error.
	code, out, errOut := runTool(t, string(running), "--argo-script", write("odd.lua", `return {status = "Fine", message = "x"}`), "--flux-exprs", fluxExprsPath)
	if code != 0 || !strings.Contains(out, `"argo":"Unknown","argoMessage":"Lua returned an invalid health status"`) {
		t.Errorf("invalid status: exit %d, %q, %q", code, out, errOut)
	}
	// A kind without an entry gets Flux's default, kstatus.
	code, out, errOut = runTool(t, string(running), "--argo-script", argoScriptPath, "--flux-exprs", write("other.yaml", "- apiVersion: example.com/v1\n  kind: Other\n  current: \"true\"\n"))
	if code != 0 || !strings.Contains(out, `"flux":"Current","fluxMessage":"no healthCheckExprs entry`) {
		t.Errorf("other kind: exit %d, %q, %q", code, out, errOut)
	}
}
