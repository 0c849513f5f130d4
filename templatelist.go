// `vmup images` lists the templates too: key, image, playbook, size, age,
// last use, and the VMs of this home alive on each.
package main

import (
	"fmt"
	"path/filepath"
	"time"
)

func listTemplatesCmd(env Env, o *Options) int {
	out := env.Out
	infos, err := listTemplates(env.Home)
	if err != nil {
		return reportError(out, err)
	}
	clones := map[string]int{}
	if names, err := listVMs(env.Home); err == nil {
		for _, name := range names {
			if j, err := readJournal(pathsFor(env.Home, name)); err == nil && j.Template != "" {
				clones[j.Template]++
			}
		}
	}
	header := false
	for _, info := range infos {
		if info.Garbage {
			continue
		}
		if !o.JSON && !header {
			fmt.Printf("\n%-12s %-20s %-20s %9s %8s %9s %s\n", "TEMPLATE", "IMAGE", "PLAYBOOK", "SIZE", "AGE", "LAST USE", "CLONES")
			header = true
		}
		ev := jsonEvent{Event: "template", Template: info.Key}
		r := info.Record
		if r == nil {
			ev.Message = fmt.Sprintf("template %s is damaged: %v", shortKey(info.Key), info.Err)
			if o.JSON {
				out.ImageEvent(ev)
			} else {
				fmt.Printf("%-12s damaged: %v\n", shortKey(info.Key), info.Err)
			}
			continue
		}
		size := r.MemoryBytes + r.DiskBytes
		ev.Name, ev.Bytes, ev.Created, ev.Count = r.Image, &size, r.Made, ptr(clones[info.Key])
		ev.Message = fmt.Sprintf("template %s of %s and %s", shortKey(info.Key), r.Image, r.Playbook)
		if !info.LastUsed.IsZero() {
			ev.LastUsed = info.LastUsed.UTC()
		}
		if o.JSON {
			out.ImageEvent(ev)
			continue
		}
		last := "never"
		if !info.LastUsed.IsZero() {
			last = ageWords(time.Since(info.LastUsed))
		}
		playbook := "-"
		if r.Playbook != "" {
			playbook = filepath.Base(r.Playbook)
		}
		fmt.Printf("%-12s %-20s %-20s %9s %8s %9s %d\n", shortKey(info.Key), filepath.Base(r.Image), playbook,
			humanBytes(size), ageWords(time.Since(r.Made)), last, clones[info.Key])
	}
	return exitOK
}
