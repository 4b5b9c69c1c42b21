// The h2spec command line for `make h2spec`: the conformance suite of ../shared/vendor/h2spec
// (MIT) takes its settings here from Go's flag package, so that it builds with Debian's Go
// packages alone (the snapshot carries no command of its own). Flags as h2spec's own:
// -h host, -p port, -t (TLS), -k (insecure), -S (strict), -o timeout in seconds, -v; the
// arguments left select sections ("generic", "http2/6.5", "hpack").
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/summerwind/h2spec"
	"github.com/summerwind/h2spec/config"
)

func main() {
	host := flag.String("h", "127.0.0.1", "target host")
	port := flag.Int("p", 0, "target port")
	path := flag.String("P", "/", "target path")
	useTLS := flag.Bool("t", false, "connect over TLS")
	insecure := flag.Bool("k", false, "do not verify the server's certificate")
	strict := flag.Bool("S", false, "run the strict test cases too")
	timeout := flag.Int("o", 2, "seconds before a test case times out")
	maxHeaderLen := flag.Int("max-header-length", 4000, "maximum length of a header")
	verbose := flag.Bool("v", false, "log every frame")
	junit := flag.String("j", "", "path of a JUnit report")
	flag.Parse()
	if *port == 0 {
		if *useTLS {
			*port = 443
		} else {
			*port = 80
		}
	}
	c := &config.Config{
		Host:         *host,
		Port:         *port,
		Path:         *path,
		Timeout:      time.Duration(*timeout) * time.Second,
		MaxHeaderLen: *maxHeaderLen,
		JUnitReport:  *junit,
		Strict:       *strict,
		TLS:          *useTLS,
		Insecure:     *insecure,
		Verbose:      *verbose,
		Sections:     flag.Args(),
	}
	success, err := h2spec.Run(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if !success {
		os.Exit(1)
	}
}
