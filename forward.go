package main

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
)

// forwarder serves --forward for a NAT guest while `up` runs in the foreground:
// libvirt's NAT network offers no host port forwards of its own.
type forwarder struct {
	listeners []net.Listener
	wg        sync.WaitGroup
}

func startForwards(guestIP string, forwards []Forward) (*forwarder, error) {
	fw := &forwarder{}
	for _, f := range forwards {
		l, err := net.Listen("tcp", net.JoinHostPort(f.Addr, strconv.Itoa(f.Host)))
		if err != nil {
			fw.Close()
			return nil, fmt.Errorf("cannot listen on %s:%d: %w", f.Addr, f.Host, err)
		}
		fw.listeners = append(fw.listeners, l)
		target := net.JoinHostPort(guestIP, strconv.Itoa(f.Guest))
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
	return fw, nil
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
