// dg-testapp: the one program in the real-node tests' images.
//
//	dg-testapp serve   an HTTP server on $PORT (default 8080):
//	                   /healthz, /id (uid, gid, groups), /write?path=P (creates P,
//	                   answers its owner and mode), /stat?path=P (owner and
//	                   mode of P), /read?path=P
//	dg-testapp pause   the pod sandbox's process: waits for SIGTERM or SIGINT and
//	                   reaps children (it is PID 1 of a shared process namespace)
//
// It is static (CGO_ENABLED=0), so the same file runs in an image with a
// shell and in one without anything else.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	mode := "serve"
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	switch mode {
	case "serve":
		serve()
	case "pause":
		pause()
	default:
		fmt.Fprintf(os.Stderr, "dg-testapp: unknown mode %q (serve or pause)\n", mode)
		os.Exit(2)
	}
}

func pause() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range signals {
		if s == syscall.SIGCHLD {
			for {
				var status syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}

type fileInfo struct {
	Path string `json:"path"`
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
	Mode string `json:"mode"`
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, err error) {
	reply(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
}

func serve() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	http.HandleFunc("/id", func(w http.ResponseWriter, r *http.Request) {
		groups, err := os.Getgroups()
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusOK, map[string]any{"uid": os.Getuid(), "gid": os.Getgid(), "groups": groups})
	})
	http.HandleFunc("/write", func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Query().Get("path")
		if err := os.WriteFile(path, []byte("written by dg-testapp\n"), 0o664); err != nil {
			fail(w, err)
			return
		}
		st, err := os.Stat(path)
		if err != nil {
			fail(w, err)
			return
		}
		sys := st.Sys().(*syscall.Stat_t)
		reply(w, http.StatusOK, fileInfo{Path: path, UID: sys.Uid, GID: sys.Gid, Mode: st.Mode().String()})
	})
	http.HandleFunc("/stat", func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Query().Get("path")
		st, err := os.Stat(path)
		if err != nil {
			fail(w, err)
			return
		}
		sys := st.Sys().(*syscall.Stat_t)
		reply(w, http.StatusOK, fileInfo{Path: path, UID: sys.Uid, GID: sys.Gid, Mode: st.Mode().String()})
	})
	http.HandleFunc("/read", func(w http.ResponseWriter, r *http.Request) {
		data, err := os.ReadFile(r.URL.Query().Get("path"))
		if err != nil {
			fail(w, err)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(data)
	})
	fmt.Printf("dg-testapp: serving on :%s as uid %d gid %d\n", port, os.Getuid(), os.Getgid())
	if err := http.ListenAndServe(":"+port, nil); err != nil {
		fmt.Fprintf(os.Stderr, "dg-testapp: %v\n", err)
		os.Exit(1)
	}
}
