package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
)

// forwarder serves --forward for a NAT guest while `up` runs in the foreground:
// libvirt's NAT network offers no host port forwards of its own.
type forwarder struct {
	forwards  []Forward
	listeners []net.Listener
	wg        sync.WaitGroup
}

// listenForwards binds every forward's host port, or none: a port that cannot
// be bound is a usage error naming it. Connections wait in the backlog until
// serve knows where the guest is.
func listenForwards(forwards []Forward) (*forwarder, error) {
	fw := &forwarder{forwards: forwards}
	for _, f := range forwards {
		l, err := net.Listen("tcp", net.JoinHostPort(f.Addr, strconv.Itoa(f.Host)))
		if err != nil {
			fw.Close()
			var se *os.SyscallError
			if errors.As(err, &se) {
				err = se.Err // "address already in use", without the repeated address
			}
			return nil, &usageError{
				msg:  fmt.Sprintf("--forward %s: cannot listen on %s:%d: %v", f, f.Addr, f.Host, err),
				hint: fmt.Sprintf("stop what listens on port %d, or forward another host port", f.Host),
			}
		}
		fw.listeners = append(fw.listeners, l)
	}
	return fw, nil
}

// serve passes the listeners' connections on to the guest at guestIP.
func (fw *forwarder) serve(guestIP string) {
	for i, l := range fw.listeners {
		target := net.JoinHostPort(guestIP, strconv.Itoa(fw.forwards[i].Guest))
		fw.wg.Add(1)
		go func() {
			defer fw.wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go pipe(c, target)
			}
		}()
	}
}

func pipe(c net.Conn, target string) {
	defer c.Close()
	g, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer g.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(g, c); done <- struct{}{} }()
	go func() { io.Copy(c, g); done <- struct{}{} }()
	<-done
}

func (fw *forwarder) Close() {
	if fw == nil {
		return
	}
	for _, l := range fw.listeners {
		l.Close()
	}
	fw.wg.Wait()
}
