package main

import (
	"context"
	"sync"
)

// workerGroup is the current stage's workers. stop_work cancels them and
// starts a new group; workers of later stages (a wipe, a shutdown) first
// wait for the stopped ones. The controller's goroutine alone changes it.
type workerGroup struct {
	workCtx    context.Context
	workCancel context.CancelFunc
	workers    *sync.WaitGroup   // the current stage's workers
	oldWorkers []*sync.WaitGroup // every stopped stage's workers
}

// startGroup begins the first stage's group.
func (w *workerGroup) startGroup() {
	w.workCtx, w.workCancel = context.WithCancel(context.Background())
	w.workers = new(sync.WaitGroup)
}

// goWork runs f as a worker of the current stage; ActStopWork cancels it.
func (w *workerGroup) goWork(f func(ctx context.Context)) {
	ctx, wg := w.workCtx, w.workers
	wg.Add(1)
	go func() {
		defer wg.Done()
		f(ctx)
	}()
}

// waitOldWorkers blocks until every worker of earlier stages has returned.
func (w *workerGroup) waitOldWorkers(old []*sync.WaitGroup) {
	for _, wg := range old {
		wg.Wait()
	}
}

// stopWork cancels the current stage's workers; later workers wait for them.
func (w *workerGroup) stopWork() {
	w.workCancel()
	w.oldWorkers = append(w.oldWorkers, w.workers)
	w.startGroup()
}

func (w *workerGroup) oldWorkersSnapshot() []*sync.WaitGroup {
	return append([]*sync.WaitGroup(nil), w.oldWorkers...)
}

// waitAlso makes this group's later workers wait for other groups too: a
// VM's wipe waits for its environment's stopped playbook.
func (w *workerGroup) waitAlso(groups []*sync.WaitGroup) {
	w.oldWorkers = append(w.oldWorkers, groups...)
}
