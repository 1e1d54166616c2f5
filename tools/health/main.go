// Command ppio-health evaluates PpioInstance objects the way GitOps tools read their health,
// with the real evaluators rather than re-implementations:
//
//   - kstatus: status.Compute of sigs.k8s.io/cli-utils/pkg/kstatus/status, plain (no custom
//     rules), as tools built on cli-utils (kpt, Config Sync, ...) compute it.
//   - Argo CD: the Lua health script run by github.com/yuin/gopher-lua the way Argo CD's
//     util/lua runs a resource.customizations.health script: a fresh LState without the
//     standard libraries (unless --argo-use-open-libs), with only the package, base and table
//     libraries and a safe os library (time, date) opened; the object decoded into Lua tables
//     as Argo CD's decodeValue does and set as the global obj; a 1s time limit; the value the
//     script returns encoded by layeh.com/gopher-json and decoded into {status, message}; a
//     status outside Argo CD's health codes becomes Unknown. An object with
//     metadata.deletionTimestamp is Progressing ("Pending deletion") before any script runs,
//     as in Argo CD's GetResourceHealth.
//   - Flux: Flux's own reader of Kustomization spec.healthCheckExprs,
//     github.com/fluxcd/pkg/runtime/cel (NewStatusReader and StatusEvaluator), which the
//     kustomize-controller uses: status.observedGeneration != metadata.generation gives
//     InProgress, then inProgress, failed and current are evaluated in that order (the first
//     true one wins; none true gives InProgress), and an expression that fails to evaluate
//     gives Unknown (the controller keeps waiting). For a kind with no entry the result is
//     Flux's default, kstatus (github.com/fluxcd/cli-utils).
//
// Usage:
//
//	ppio-health --argo-script PATH --flux-exprs PATH < object-or-list.json
//
// Stdin holds one object (as kubectl get -o json prints it) or a list ({"items": [...]}).
// For each object one JSON line is printed:
//
//	{"name":..., "kstatus":..., "kstatusMessage":..., "argo":..., "argoMessage":..., "flux":..., "fluxMessage":...}
//
// Bad input, a script that fails to load or run, or expressions that fail to parse exit 1
// with a message on stderr; bad flags exit 2.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/polling/engine"
	fluxstatus "github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/pkg/apis/kustomize"
	fluxcel "github.com/fluxcd/pkg/runtime/cel"
	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	luajson "layeh.com/gopher-json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

// Result is the line printed for one object.
type Result struct {
	Name           string `json:"name"`
	Kstatus        string `json:"kstatus"`
	KstatusMessage string `json:"kstatusMessage"`
	Argo           string `json:"argo"`
	ArgoMessage    string `json:"argoMessage"`
	Flux           string `json:"flux"`
	FluxMessage    string `json:"fluxMessage"`
}

// Evaluator holds the loaded Argo CD script and Flux expressions.
type Evaluator struct {
	argoScript   string
	argoOpenLibs bool
	fluxChecks   []kustomize.CustomHealthCheck
	fluxReader   engine.StatusReader
}

// NewEvaluator loads the Argo CD health script and the Flux healthCheckExprs entries (a YAML
// list, as pasted under a Kustomization's spec.healthCheckExprs). The script is compiled once
// here so that a syntax error is reported before any object is read.
func NewEvaluator(argoScript, fluxExprs []byte, argoOpenLibs bool) (*Evaluator, error) {
	if err := compileLua(string(argoScript)); err != nil {
		return nil, fmt.Errorf("argo script: %w", err)
	}
	var checks []kustomize.CustomHealthCheck
	if err := yaml.UnmarshalStrict(fluxExprs, &checks); err != nil {
		return nil, fmt.Errorf("flux expressions: expected a YAML list of healthCheckExprs entries: %w", err)
	}
	if len(checks) == 0 {
		return nil, errors.New("flux expressions: the list is empty")
	}
	newReader, err := fluxcel.NewStatusReader(checks)
	if err != nil {
		return nil, fmt.Errorf("flux expressions: %w", err)
	}
	return &Evaluator{
		argoScript:   string(argoScript),
		argoOpenLibs: argoOpenLibs,
		fluxChecks:   checks,
		// The reader needs a RESTMapper only to look objects up in a cluster; it is given
		// objects here.
		fluxReader: newReader(nil),
	}, nil
}

// Evaluate runs the three evaluators over one object.
func (e *Evaluator) Evaluate(obj map[string]any) (Result, error) {
	u := &unstructured.Unstructured{Object: obj}
	r := Result{Name: u.GetName()}

	ks, err := status.Compute(u.DeepCopy())
	if err != nil {
		return r, fmt.Errorf("kstatus: %w", err)
	}
	r.Kstatus, r.KstatusMessage = ks.Status.String(), ks.Message

	argoStatus, argoMessage, err := e.argo(u.DeepCopy())
	if err != nil {
		return r, fmt.Errorf("argo script: %w", err)
	}
	r.Argo, r.ArgoMessage = argoStatus, argoMessage

	r.Flux, r.FluxMessage, err = e.flux(u.DeepCopy())
	if err != nil {
		return r, fmt.Errorf("flux: %w", err)
	}
	return r, nil
}

// --- Argo CD -----------------------------------------------------------------------------

// Argo CD's health codes (gitops-engine pkg/health).
var argoHealthCodes = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true,
	"Healthy": true, "Degraded": true, "Missing": true,
}

// compileLua reports a syntax error in the script.
func compileLua(script string) error {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	_, err := l.LoadString(script)
	return err
}

func (e *Evaluator) argo(u *unstructured.Unstructured) (string, string, error) {
	// Argo CD's GetResourceHealth answers before any health script for an object being deleted.
	if u.GetDeletionTimestamp() != nil {
		return "Progressing", "Pending deletion", nil
	}
	l := lua.NewState(lua.Options{SkipOpenLibs: !e.argoOpenLibs})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, openSafeOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true},
			lua.LString(lib.name)); err != nil {
			return "", "", fmt.Errorf("opening the Lua %q library: %w", lib.name, err)
		}
	}
	l.PreloadModule(lua.OsLibName, safeOsLoader)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decodeValue(l, u.Object))
	if err := l.DoString(e.argoScript); err != nil {
		return "", "", err
	}
	ret := l.Get(-1)
	switch ret.Type() {
	case lua.LTNil:
		// Argo CD takes a script that returns nothing as an empty health status.
		return "", "", nil
	case lua.LTTable:
	default:
		return "", "", fmt.Errorf("expect table output from Lua script, not %s", ret.Type())
	}
	encoded, err := luajson.Encode(ret)
	if err != nil {
		return "", "", err
	}
	var hs struct {
		Status  string `json:"status,omitempty"`
		Message string `json:"message,omitempty"`
	}
	if err := json.Unmarshal(encoded, &hs); err != nil {
		// An empty table encodes as [], which Argo CD takes as an empty health status.
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Value == "array" {
			return "", "", nil
		}
		return "", "", err
	}
	if !argoHealthCodes[hs.Status] {
		return "Unknown", "Lua returned an invalid health status", nil
	}
	return hs.Status, hs.Message, nil
}

// decodeValue converts an object into Lua values as Argo CD's util/lua decodeValue does:
// maps become hash tables, slices array tables, numbers (float64, int, int32, int64) Lua
// numbers, json.Number a string, nil and anything else nil.
func decodeValue(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(v)
	case int:
		return lua.LNumber(v)
	case int32:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case []any:
		arr := l.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	}
	return lua.LNil
}

// The safe subset of the os library that Argo CD opens for health scripts: os.time and os.date
// (no exit, execute, getenv, remove, ...). Only what a health script may call to read the time.
var safeOsFuncs = map[string]lua.LGFunction{"time": osTime, "date": osDate}

func openSafeOs(l *lua.LState) int {
	l.Push(l.RegisterModule(lua.OsLibName, safeOsFuncs))
	return 1
}

func safeOsLoader(l *lua.LState) int {
	l.Push(l.SetFuncs(l.NewTable(), safeOsFuncs))
	return 1
}

func osTime(l *lua.LState) int {
	if l.GetTop() == 0 {
		l.Push(lua.LNumber(time.Now().Unix()))
		return 1
	}
	tbl := l.CheckTable(1)
	field := func(key string, def int) int {
		if n, ok := tbl.RawGetString(key).(lua.LNumber); ok {
			return int(n)
		}
		return def
	}
	t := time.Date(field("year", -1), time.Month(field("month", -1)), field("day", -1),
		field("hour", 12), field("min", 0), field("sec", 0), 0, time.Local)
	l.Push(lua.LNumber(t.Unix()))
	return 1
}

// osDate supports os.date(), os.date("*t"/"!*t"[, t]) and returns RFC 3339 for other formats.
func osDate(l *lua.LState) int {
	t := time.Now()
	format := "%c"
	if l.GetTop() >= 1 {
		format = l.CheckString(1)
		if strings.HasPrefix(format, "!") {
			t = t.UTC()
			format = format[1:]
		}
		if l.GetTop() >= 2 {
			t = time.Unix(l.CheckInt64(2), 0)
		}
	}
	if strings.HasPrefix(format, "*t") {
		ret := l.NewTable()
		for k, v := range map[string]int{"year": t.Year(), "month": int(t.Month()), "day": t.Day(),
			"hour": t.Hour(), "min": t.Minute(), "sec": t.Second(), "wday": int(t.Weekday()) + 1} {
			ret.RawSetString(k, lua.LNumber(v))
		}
		ret.RawSetString("yday", lua.LNumber(t.YearDay()))
		ret.RawSetString("isdst", lua.LFalse)
		l.Push(ret)
		return 1
	}
	l.Push(lua.LString(t.Format(time.RFC3339)))
	return 1
}

// --- Flux --------------------------------------------------------------------------------

func (e *Evaluator) flux(u *unstructured.Unstructured) (string, string, error) {
	gk := u.GroupVersionKind().GroupKind()
	if !e.fluxReader.Supports(gk) {
		// No healthCheckExprs entry: Flux falls back to kstatus.
		res, err := fluxstatus.Compute(u)
		if err != nil {
			return "Unknown", err.Error(), nil
		}
		return res.Status.String(), "no healthCheckExprs entry for " + gk.String() + "; kstatus: " + res.Message, nil
	}
	ctx := context.Background()
	rs, err := e.fluxReader.ReadStatusForObject(ctx, nil, u)
	if err != nil {
		return "", "", err
	}
	if rs.Error != nil {
		return rs.Status.String(), rs.Error.Error(), nil
	}
	return rs.Status.String(), e.fluxReason(ctx, u, gk), nil
}

// fluxReason says which step of Flux's evaluation decided (Flux itself gives no message): it
// re-evaluates the same entry's expressions with Flux's own expression type, in Flux's order.
func (e *Evaluator) fluxReason(ctx context.Context, u *unstructured.Unstructured, gk schema.GroupKind) string {
	obj := u.UnstructuredContent()
	og, ok, err := unstructured.NestedInt64(obj, "status", "observedGeneration")
	if err == nil && ok {
		if g, ok, err := unstructured.NestedInt64(obj, "metadata", "generation"); err == nil && ok && g != og {
			return fmt.Sprintf("status.observedGeneration %d differs from metadata.generation %d", og, g)
		}
	}
	var entry *kustomize.CustomHealthCheck
	for i := range e.fluxChecks {
		c := &e.fluxChecks[i]
		cgk := schema.FromAPIVersionAndKind(c.APIVersion, c.Kind).GroupKind()
		if cgk == gk || (c.Kind == "" && cgk.Group == gk.Group) {
			entry = c
			break
		}
	}
	if entry == nil {
		return ""
	}
	for _, step := range []struct{ name, expr string }{
		{"inProgress", entry.InProgress},
		{"failed", entry.Failed},
		{"current", entry.Current},
	} {
		if step.expr == "" {
			continue
		}
		x, err := fluxcel.NewExpression(step.expr)
		if err != nil {
			return err.Error()
		}
		if ok, err := x.EvaluateBoolean(ctx, obj); err != nil {
			return err.Error()
		} else if ok {
			return "the " + step.name + " expression is true"
		}
	}
	return "no expression is true (Flux then reports InProgress)"
}

// --- input and main ----------------------------------------------------------------------

// DecodeObjects reads one object or a list ({"items": [...]}) as the API server and kubectl
// print them. Numbers decode as int64 where integral, as the Kubernetes clients do.
func DecodeObjects(data []byte) ([]map[string]any, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("no input: expected a JSON object or list on stdin")
	}
	var top map[string]any
	if err := utiljson.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if top == nil {
		return nil, errors.New("expected a JSON object or list, got null")
	}
	items, isList := top["items"]
	if !isList {
		return []map[string]any{top}, nil
	}
	list, ok := items.([]any)
	if !ok && items != nil {
		return nil, errors.New("items is not a JSON array")
	}
	out := make([]map[string]any, 0, len(list))
	for i, it := range list {
		obj, ok := it.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("items[%d] is not a JSON object", i)
		}
		out = append(out, obj)
	}
	return out, nil
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ppio-health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	argoPath := fs.String("argo-script", "", "path of the Argo CD Lua health script (required)")
	fluxPath := fs.String("flux-exprs", "", "path of the Flux healthCheckExprs YAML list (required)")
	openLibs := fs.Bool("argo-use-open-libs", false,
		"run the Argo CD script with Lua's standard libraries, as argocd-cm's resource.customizations.useOpenLibs does")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: ppio-health --argo-script PATH --flux-exprs PATH < object-or-list.json")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *argoPath == "" || *fluxPath == "" || fs.NArg() != 0 {
		fs.Usage()
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "ppio-health: "+format+"\n", a...)
		return 1
	}
	script, err := os.ReadFile(*argoPath)
	if err != nil {
		return fail("%v", err)
	}
	exprs, err := os.ReadFile(*fluxPath)
	if err != nil {
		return fail("%v", err)
	}
	ev, err := NewEvaluator(script, exprs, *openLibs)
	if err != nil {
		return fail("%v", err)
	}
	input, err := io.ReadAll(stdin)
	if err != nil {
		return fail("reading stdin: %v", err)
	}
	objs, err := DecodeObjects(input)
	if err != nil {
		return fail("stdin: %v", err)
	}
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	for i, obj := range objs {
		r, err := ev.Evaluate(obj)
		if err != nil {
			return fail("object %d (%q): %v", i, r.Name, err)
		}
		if err := enc.Encode(r); err != nil {
			return fail("writing: %v", err)
		}
	}
	return 0
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
