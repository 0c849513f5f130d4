package main

// Everything vmup tells the user goes through Output, in one voice:
//
//   - An error says what failed and names the thing: "cannot reach libvirt at
//     qemu:///system: …". Lowercase unless it starts with a name (VM web),
//     no trailing period.
//   - A warning says what vmup did anyway, or did not do: "the guest did not
//     shut down within 1m0s; forcing it off".
//   - A hint says what to do next: an imperative, any command in backticks,
//     "run `vmup destroy web` to remove it". One hint per line; an error may
//     have several.
//
// reportError is the only function that prints an error and its hints. Code
// that fails returns an error carrying them: a usageError (exit 2, nothing
// created) or a hintedError (exit 1 unless it names another code).

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Output speaks for one command: human lines on stderr, and with --json one
// JSON object per line on stdout. Every JSON event name is listed in the README.
type Output struct {
	mu    sync.Mutex
	human io.Writer
	json  *json.Encoder
	vm    string
	phase Phase
	tty   bool

	step, total int
	stepTitle   string
	stepDetail  string // a download's progress, after the title
	stepStart   time.Time
	now         func() time.Time // steps are timed by it; tests set it
	spinStop    chan struct{}
	spinDone    chan struct{}
	exited      bool
	muted       bool // a signal ended the command: only the exit event is left to say
	// ansibleCode and ansibleResult are how a playbook ended, for the exit event.
	ansibleCode   *int
	ansibleResult string

	// An environment's command speaks for each VM through a child Output
	// (envout.go): its lines begin with prefix, and its exit is recorded
	// for the environment's exit event, not sent.
	prefix  string
	envName string // an environment's command: every event names the environment
	child   bool
	parent  *Output    // a child's: muted with it
	outcome *vmOutcome // the child's exit: set by Exit
	vms     []vmOutcome
	// A run's id and the stage it ended in, for its exit event.
	runID, runStage string
}

type jsonEvent struct {
	Time     string `json:"time"`
	VM       string `json:"vm,omitempty"`
	Phase    string `json:"phase,omitempty"`
	Event    string `json:"event"`
	Message  string `json:"message,omitempty"`
	Step     string `json:"step,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	// Modules names the cloud-init modules a warning is about.
	Modules []string `json:"modules,omitempty"`
	// A download's progress (event progress).
	Bytes          *int64 `json:"bytes,omitempty"`
	TotalBytes     *int64 `json:"total_bytes,omitempty"`
	BytesPerSecond *int64 `json:"bytes_per_second,omitempty"`
	ETASeconds     *int64 `json:"eta_seconds,omitempty"`
	// An image name of `vmup images` (event image).
	Name        string        `json:"name,omitempty"`
	URL         string        `json:"url,omitempty"`
	ChecksumURL string        `json:"checksum_url,omitempty"`
	Cached      []cachedImage `json:"cached,omitempty"`
	// Template is a template's key (events template_made, provisioned_from_template).
	Template string `json:"template,omitempty"`
	// Of a template (event template of `images`): its last use, and how many VMs of this home are its clones.
	LastUsed time.Time `json:"last_used,omitzero"`
	Count    *int      `json:"clones,omitempty"`
	// DurationS is how long a finished step took, in seconds.
	DurationS *float64 `json:"duration_s,omitempty"`
	// One VM of `vmup status` (event vm); its name and phase are vm and phase.
	Domain     string    `json:"domain,omitempty"`
	SSH        string    `json:"ssh,omitempty"`
	Address    string    `json:"address,omitempty"`
	Forwards   *[]string `json:"forwards,omitempty"` // there even when empty
	PID        int       `json:"pid,omitempty"`
	Holder     string    `json:"holder,omitempty"`
	Created    time.Time `json:"created,omitzero"`
	AgeSeconds *int64    `json:"age_seconds,omitempty"`
	// What `vmup ssh-config` prints and the file it keeps it in (event ssh_config).
	Config string `json:"config,omitempty"`
	Path   string `json:"path,omitempty"`
	// How ansible-playbook ended a first boot or a provision (event exit).
	AnsibleExitCode *int   `json:"ansible_exit_code,omitempty"`
	AnsibleResult   string `json:"ansible_result,omitempty"`
	// An environment's command (event exit): each VM's outcome. A VM of
	// status (event vm): its environment, and whether vmup.json still has it.
	VMs         []vmOutcome `json:"vms,omitempty"`
	Environment string      `json:"environment,omitempty"`
	OutsideFile bool        `json:"outside_file,omitempty"`
	// `vmup run` (its events, and status's vm event): the run's id; the
	// stage its end was decided in (event exit); since when a VM's workload runs.
	Run      string    `json:"run,omitempty"`
	Stage    string    `json:"stage,omitempty"`
	RunSince time.Time `json:"run_since,omitzero"`
}

func newOutput(human io.Writer, jsonOut io.Writer, vm string) *Output {
	// Serialized: an environment's VMs speak through Outputs of their own.
	o := &Output{human: &serialWriter{w: human}, vm: vm, phase: noPhase, now: time.Now}
	if jsonOut != nil {
		o.json = json.NewEncoder(&serialWriter{w: jsonOut})
	}
	if f, ok := human.(*os.File); ok {
		_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
		o.tty = err == nil
	}
	return o
}

func (o *Output) emit(event, message, step string, exit *int) {
	o.emitEvent(jsonEvent{Event: event, Message: message, Step: step, ExitCode: exit})
}

// emitEvent adds the time, the VM and the phase to ev and writes it.
func (o *Output) emitEvent(ev jsonEvent) {
	if o.json == nil || o.silenced() && ev.Event != "exit" {
		return
	}
	ev.Time = time.Now().UTC().Format(time.RFC3339Nano)
	if ev.VM == "" { // a vm event names its own VM and phase
		ev.VM = o.vm
	}
	if ev.Environment == "" {
		ev.Environment = o.envName
	}
	if ev.Phase == "" && o.phase != noPhase {
		ev.Phase = o.phase.String()
	}
	o.json.Encode(ev)
}

// line prints one human line, clearing a spinner's line first.
func (o *Output) line(format string, a ...any) {
	if o.silenced() {
		return
	}
	if o.tty && o.spinStop != nil {
		fmt.Fprint(o.human, "\r\033[K")
	}
	fmt.Fprint(o.human, o.prefix+fmt.Sprintf(format, a...)+"\n") // one write: whole lines, also among VMs
}

// SetPhase records a phase change.
func (o *Output) SetPhase(p Phase) {
	o.mu.Lock()
	defer o.mu.Unlock()
	from := o.phase
	o.phase = p
	msg := p.String()
	if from != noPhase {
		msg = from.String() + " -> " + p.String()
	}
	o.emit("phase", msg, "", nil)
}

// Plan sets how many numbered steps this run will show.
func (o *Output) Plan(total int) {
	o.mu.Lock()
	o.total, o.step = total, 0
	o.mu.Unlock()
}

// Replan changes how many steps this run shows, from the one under way.
func (o *Output) Replan(total int) {
	o.mu.Lock()
	o.total = total
	o.mu.Unlock()
}

// Step begins the next numbered step; finish it with Done, Skip or Fail.
func (o *Output) Step(title string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.endSpinner()
	o.step++
	if o.step > o.total {
		o.total = o.step
	}
	o.stepTitle, o.stepDetail, o.stepStart = title, "", o.now()
	o.emit("step_started", title, o.stepLabel(), nil)
	switch {
	case o.silenced():
	case o.tty:
		o.spinStop, o.spinDone = make(chan struct{}), make(chan struct{})
		go o.spin(o.spinStop, o.spinDone, fmt.Sprintf("[%s]", o.stepLabel()), title)
	default:
		// No spinner off a terminal: a line says the step began, so one
		// that hangs is seen in a CI log or behind `| tee`.
		o.line("[%s] %s …", o.stepLabel(), title)
	}
}

func (o *Output) stepLabel() string { return fmt.Sprintf("%d/%d", o.step, o.total) }

func (o *Output) spin(stop, done chan struct{}, label, title string) {
	defer close(done)
	frames := []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var drawn time.Time
	for i := 0; ; i++ {
		o.mu.Lock()
		// A line with progress on it is redrawn a few times a second at most.
		if o.stepDetail == "" {
			fmt.Fprintf(o.human, "\r\033[K%s %s %s", label, frames[i%len(frames)], title)
		} else if time.Since(drawn) >= progressInterval {
			fmt.Fprintf(o.human, "\r\033[K%s %s %s: %s", label, frames[i%len(frames)], title, o.stepDetail)
			drawn = time.Now()
		}
		o.mu.Unlock()
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

// endSpinner stops the spinner; o.mu is held and released while it ends.
func (o *Output) endSpinner() {
	if o.spinStop == nil {
		return
	}
	close(o.spinStop)
	o.mu.Unlock()
	<-o.spinDone
	o.mu.Lock()
	fmt.Fprint(o.human, "\r\033[K")
	o.spinStop = nil
}

func (o *Output) finishStep(mark, event, detail string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.stepTitle == "" {
		return
	}
	o.endSpinner()
	text := o.stepTitle
	if detail != "" {
		text += ": " + detail
	}
	took := o.now().Sub(o.stepStart)
	o.line("[%s] %s %s (%s)", o.stepLabel(), mark, text, stepDuration(took))
	secs := math.Round(took.Seconds()*1000) / 1000
	o.emitEvent(jsonEvent{Event: event, Message: text, Step: o.stepLabel(), DurationS: &secs})
	o.stepTitle, o.stepDetail = "", ""
}

// Progress shows how far a download of file is: after the step's title on a
// terminal, and as a progress event. total and eta are negative when unknown.
// Its caller calls it a few times a second at most.
func (o *Output) Progress(file string, done, total, rate int64, eta time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	msg := file + ": " + humanBytes(done)
	ev := jsonEvent{Event: "progress", Bytes: &done, BytesPerSecond: &rate}
	if total >= 0 {
		msg += " of " + humanBytes(total)
		ev.TotalBytes = &total
	}
	msg += ", " + humanBytes(rate) + "/s"
	if eta >= 0 {
		secs := int64((eta + time.Second - 1) / time.Second)
		msg += ", ETA " + (time.Duration(secs) * time.Second).String()
		ev.ETASeconds = &secs
	}
	if o.stepTitle != "" {
		ev.Step = o.stepLabel()
	}
	ev.Message, o.stepDetail = msg, msg
	o.emitEvent(ev)
}

// EndProgress takes a finished download's progress off the step's line.
func (o *Output) EndProgress() {
	o.mu.Lock()
	o.stepDetail = ""
	o.mu.Unlock()
}

// ImageEvent sends one image name of `vmup images` as a JSON event.
func (o *Output) ImageEvent(ev jsonEvent) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.emitEvent(ev)
}

// Data sends an event that carries data of its own (a vm of status, an
// ssh_config), its message, if any, also as a human line.
func (o *Output) Data(ev jsonEvent) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if ev.Message != "" {
		o.line("%s", ev.Message)
	}
	o.emitEvent(ev)
}

// AnsibleEnded records ansible-playbook's exit code and its reading, which
// the exit event carries.
func (o *Output) AnsibleEnded(code int, result string) {
	o.mu.Lock()
	o.ansibleCode, o.ansibleResult = &code, result
	o.mu.Unlock()
}

// stepDuration reads as "35.2 s", and from a minute on as "5 min 12 s".
func stepDuration(d time.Duration) string {
	if d = d.Round(100 * time.Millisecond); d < time.Minute {
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
	d = d.Round(time.Second)
	return fmt.Sprintf("%d min %d s", d/time.Minute, d%time.Minute/time.Second)
}

func (o *Output) Done(detail string) { o.finishStep("✓", "step_done", detail) }
func (o *Output) Skip(detail string) { o.finishStep("—", "step_skipped", detail) }
func (o *Output) Fail(detail string) { o.finishStep("✗", "step_failed", detail) }

// Say prints a plain progress line and sends it as event.
func (o *Output) Say(event, format string, a ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	msg := fmt.Sprintf(format, a...)
	o.line("%s", msg)
	o.emit(event, msg, "", nil)
}

// Indented copies child output under the current step, line by line.
func (o *Output) Indented(prefix string) io.Writer { return &indentWriter{o: o, prefix: prefix} }

type indentWriter struct {
	o      *Output
	prefix string
	buf    []byte
}

func (w *indentWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			break
		}
		w.o.mu.Lock()
		w.o.line("%s%s", w.prefix, w.buf[:i])
		w.o.mu.Unlock()
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// Warn may be called anywhere; Error and Hint only by reportError
// (voice_test.go checks).
func (o *Output) Warn(format string, a ...any)  { o.message("warning", format, a...) }
func (o *Output) Hint(format string, a ...any)  { o.message("hint", format, a...) }
func (o *Output) Error(format string, a ...any) { o.message("error", format, a...) }

// WarnModules is a warning about failed cloud-init modules: its JSON event
// names them in "modules", so a script need not parse the message.
func (o *Output) WarnModules(modules []string, format string, a ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	msg := fmt.Sprintf(format, a...)
	o.line("vmup: warning: %s", msg)
	o.emitEvent(jsonEvent{Event: "warning", Message: msg, Modules: modules})
}

// hintedError is a failure that says what to do about it. Each line of hint
// is a hint of its own; code is the exit code, exitFailed if 0.
type hintedError struct {
	msg, hint string
	code      int
}

func (e *hintedError) Error() string { return e.msg }
func (e *hintedError) Hint() string  { return e.hint }

// reportError prints err and its hints, and returns the exit code it calls for.
func reportError(out *Output, err error) int {
	code := exitFailed
	var ue *usageError
	var he *hintedError
	switch {
	case errors.As(err, &ue):
		out.Error("%s", ue.msg)
		code = exitUsage
	default:
		out.Error("%v", err)
		if errors.As(err, &he) && he.code != 0 {
			code = he.code
		}
	}
	var h interface{ Hint() string }
	if errors.As(err, &h) {
		for line := range strings.SplitSeq(h.Hint(), "\n") {
			if line != "" {
				out.Hint("%s", line)
			}
		}
	}
	return code
}

func (o *Output) message(kind, format string, a ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	msg := fmt.Sprintf(format, a...)
	o.line("vmup: %s: %s", kind, msg)
	o.emit(kind, msg, "", nil)
}

// Mute drops everything said from now on but the exit event.
func (o *Output) Mute() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.endSpinner()
	o.muted = true
}

// Exit sends the last JSON event, which carries the exit code.
func (o *Output) Exit(code int, message string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.endSpinner()
	if o.exited {
		return
	}
	o.exited = true
	if o.child {
		o.outcome = &vmOutcome{VM: o.vm, Phase: message, ExitCode: code}
		return
	}
	o.emitEvent(jsonEvent{Event: "exit", Message: message, ExitCode: &code,
		AnsibleExitCode: o.ansibleCode, AnsibleResult: o.ansibleResult, VMs: o.vms, Run: o.runID, Stage: o.runStage})
}
