// Command backend is the fixed-answer HTTP server the Charon benchmark puts
// behind the ferry and HAProxy: every path answers the same small JSON, and
// /healthz answers 200.
package main

import (
	"flag"
	"log"
	"net/http"
	"strings"
	"sync"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18081,127.0.0.1:18082", "comma-separated addresses to serve on")
	flag.Parse()
	body := []byte(`{"templates":[{"name":"base","runtime":"microvm"},{"name":"python","runtime":"microvm"}]}` + "\n")
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
	var wg sync.WaitGroup
	for _, addr := range strings.Split(*listen, ",") {
		wg.Go(func() { log.Fatal(http.ListenAndServe(addr, h)) })
	}
	wg.Wait()
}
