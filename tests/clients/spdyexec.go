// spdyexec: an exec/attach client built on spdystream, the SPDY library kubectl and crictl use, for
// compatibility tests of Calyx's streaming server. It does what client-go's remotecommand does:
// upgrade with X-Stream-Protocol-Version, open one stream per channel (waiting for each reply),
// copy stdin in and stdout/stderr out, then read the error stream to its end.
//
// usage: spdyexec URL PROTOCOL STREAMS STATUSFILE   (STREAMS: e.g. error,stdin,stdout,stderr)
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/docker/spdystream"
)

// bufferedConn hands spdystream the bytes the HTTP response reader already buffered.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "spdyexec: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	if len(os.Args) != 5 {
		fail("usage: spdyexec URL PROTOCOL STREAMS STATUSFILE")
	}
	target, err := url.Parse(os.Args[1])
	if err != nil {
		fail("bad url: %v", err)
	}
	conn, err := net.Dial("tcp", target.Host)
	if err != nil {
		fail("dial: %v", err)
	}
	req, _ := http.NewRequest("POST", target.String(), nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	req.Header.Add("X-Stream-Protocol-Version", os.Args[2])
	if err := req.Write(conn); err != nil {
		fail("write request: %v", err)
	}
	reader := bufio.NewReader(conn)
	resp, err := http.ReadResponse(reader, req)
	if err != nil {
		fail("read response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		fail("upgrade refused: %s", resp.Status)
	}
	session, err := spdystream.NewConnection(&bufferedConn{conn, reader}, false)
	if err != nil {
		fail("spdy: %v", err)
	}
	go session.Serve(spdystream.NoOpStreamHandler)
	streams := map[string]*spdystream.Stream{}
	for _, kind := range strings.Split(os.Args[3], ",") {
		headers := http.Header{}
		headers.Set("streamType", kind)
		stream, err := session.CreateStream(headers, nil, false)
		if err != nil {
			fail("create %s stream: %v", kind, err)
		}
		if err := stream.WaitTimeout(30 * time.Second); err != nil {
			fail("no reply for the %s stream: %v", kind, err)
		}
		streams[kind] = stream
	}
	if stdin, ok := streams["stdin"]; ok {
		go func() {
			io.Copy(stdin, os.Stdin)
			stdin.Close()
		}()
	}
	var wg sync.WaitGroup
	copyOut := func(kind string, out io.Writer) {
		if stream, ok := streams[kind]; ok {
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(out, stream)
			}()
		}
	}
	copyOut("stdout", os.Stdout)
	copyOut("stderr", os.Stderr)
	status, err := io.ReadAll(streams["error"])
	if err != nil {
		fail("read error stream: %v", err)
	}
	wg.Wait()
	if err := os.WriteFile(os.Args[4], status, 0o644); err != nil {
		fail("write status: %v", err)
	}
	session.Close()
}
