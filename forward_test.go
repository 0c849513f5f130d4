package main

import (
	"bufio"
	"net"
	"testing"
)

// The in-process forwards of a NAT guest carry bytes both ways.
func TestForwarderCarriesBothWays(t *testing.T) {
	guest, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Close()
	go func() {
		for {
			c, err := guest.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				c.Write([]byte("echo " + line))
			}()
		}
	}()
	probe, _ := net.Listen("tcp", "127.0.0.1:0")
	hostPort := probe.Addr().(*net.TCPAddr).Port
	probe.Close()
	fw, err := listenForwards([]Forward{{"127.0.0.1", hostPort, guest.Addr().(*net.TCPAddr).Port}})
	if err != nil {
		t.Fatal(err)
	}
	fw.serve("127.0.0.1")
	c, err := net.Dial("tcp", probe.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hello\n"))
	got, _ := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if got != "echo hello\n" {
		t.Errorf("through the forward: %q", got)
	}
	fw.Close()
	if _, err := net.Dial("tcp", probe.Addr().String()); err == nil {
		t.Error("the forward still listens after Close")
	}
}
