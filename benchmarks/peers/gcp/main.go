// The go-control-plane peer of benchmarks/load.py: the resources xdsd generates for
// the benchmark mesh, served from go-control-plane's caches as its users run them.
//
//	gcp-peer -capture FILE -port P
//
// FILE (written by load.py) holds one proxy per class: {"payloads": [base64 of a
// serialized resource, ...], "classes": {CLASS: {TYPE_URL: {NAME: payload index}}}}.
// Each payload is unmarshalled once into its Envoy message. CDS, LDS and RDS come
// from a snapshot cache holding one snapshot per proxy class (the node hash maps a
// node id to its class, as load.py's classes: pods svc-S-J of service svc-S, or
// clients.NAMESPACE); EDS comes from a linear cache (one resource per cluster,
// shared by every node) when every class holds the same bytes for a name, else
// from the snapshots too. A mux cache routes requests by type; SotW and Delta ADS
// are go-control-plane's own servers.
//
// Changes arrive on stdin, one per line, as for benchmarks/floor.py:
//
//	eds OLD_ADDRESS NEW_ADDRESS   every EDS resource holding OLD gets NEW instead
//	rds OLD_MARKER NEW_MARKER     the same for RDS resources (a VirtualService edit)
//
// The changed resources are made anew (bytes replaced, then unmarshalled: the part
// a real control plane spends computing them) and handed to the caches through
// their public API: LinearCache.UpdateResources for EDS, SetSnapshot with the
// changed type's version bumped for every class holding a changed resource. It
// prints "ready" once it listens and stops at EOF of stdin or SIGTERM.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
)

// The types served, in snapshot order.
var typeURLs = []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType}

type capture struct {
	Payloads []string                             `json:"payloads"`
	Classes  map[string]map[string]map[string]int `json:"classes"`
}

// classHash: load.py's class_of_node.
type classHash struct{}

func (classHash) ID(node *core.Node) string {
	if node == nil {
		return ""
	}
	parts := strings.Split(node.GetId(), "~")
	if len(parts) != 4 {
		return ""
	}
	pod, ns, _ := strings.Cut(parts[2], ".")
	if strings.HasPrefix(pod, "svc-") {
		return pod[:strings.LastIndex(pod, "-")]
	}
	return "clients." + ns
}

func newMessage(typeURL string) proto.Message {
	switch typeURL {
	case resource.ClusterType:
		return &clusterv3.Cluster{}
	case resource.EndpointType:
		return &endpointv3.ClusterLoadAssignment{}
	case resource.ListenerType:
		return &listenerv3.Listener{}
	case resource.RouteType:
		return &routev3.RouteConfiguration{}
	}
	return nil
}

// peer holds the payloads (as bytes and as messages) and which class holds which.
type peer struct {
	raw      [][]byte
	msgs     []types.Resource
	typeOf   []string
	classes  map[string]map[string]map[string]int // class -> type -> name -> payload
	versions map[string]map[string]int            // class -> type -> version
	snaps    map[string]*cache.Snapshot
	snapshot cache.SnapshotCache
	linear   *cache.LinearCache // EDS, when shared by every class
	edsOwner map[string]int     // EDS name -> payload (linear mode)
}

func (p *peer) decode(i int) error {
	msg := newMessage(p.typeOf[i])
	if err := proto.Unmarshal(p.raw[i], msg); err != nil {
		return fmt.Errorf("payload %d (%s): %w", i, p.typeOf[i], err)
	}
	p.msgs[i] = msg
	return nil
}

func (p *peer) items(class, typeURL string) []types.Resource {
	names := p.classes[class][typeURL]
	out := make([]types.Resource, 0, len(names))
	for _, i := range names {
		out = append(out, p.msgs[i])
	}
	return out
}

// setSnapshot gives `class` a snapshot whose `changed` types are rebuilt with a new
// version; the other types keep their Resources (and versions) as they were.
func (p *peer) setSnapshot(class string, changed map[string]bool) error {
	old := p.snaps[class]
	snap := &cache.Snapshot{}
	for _, t := range typeURLs {
		if t == resource.EndpointType && p.linear != nil {
			continue
		}
		idx := cache.GetResponseType(t)
		if old != nil && !changed[t] {
			snap.Resources[idx] = old.Resources[idx]
			continue
		}
		p.versions[class][t]++
		snap.Resources[idx] = cache.NewResources(strconv.Itoa(p.versions[class][t]), p.items(class, t))
	}
	p.snaps[class] = snap
	return p.snapshot.SetSnapshot(context.Background(), class, snap)
}

func load(path string) (*peer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c capture
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, err
	}
	p := &peer{
		raw:      make([][]byte, len(c.Payloads)),
		msgs:     make([]types.Resource, len(c.Payloads)),
		typeOf:   make([]string, len(c.Payloads)),
		classes:  c.Classes,
		versions: map[string]map[string]int{},
		snaps:    map[string]*cache.Snapshot{},
	}
	for i, s := range c.Payloads {
		if p.raw[i], err = base64.StdEncoding.DecodeString(s); err != nil {
			return nil, err
		}
	}
	for _, byType := range c.Classes {
		for t, names := range byType {
			for _, i := range names {
				p.typeOf[i] = t
			}
		}
	}
	for i := range p.raw {
		if err := p.decode(i); err != nil {
			return nil, err
		}
	}
	// EDS from a linear cache when one payload per name serves every class.
	p.edsOwner = map[string]int{}
	shared := true
	for _, byType := range c.Classes {
		for name, i := range byType[resource.EndpointType] {
			if j, ok := p.edsOwner[name]; ok && j != i {
				shared = false
			}
			p.edsOwner[name] = i
		}
	}
	if shared {
		initial := map[string]types.Resource{}
		for name, i := range p.edsOwner {
			initial[name] = p.msgs[i]
		}
		p.linear = cache.NewLinearCache(resource.EndpointType, cache.WithInitialResources(initial))
	}
	p.snapshot = cache.NewSnapshotCache(true, classHash{}, nil)
	for class := range c.Classes {
		p.versions[class] = map[string]int{}
		if err := p.setSnapshot(class, nil); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func (p *peer) cache() cache.Cache {
	if p.linear == nil {
		return p.snapshot
	}
	return &cache.MuxCache{
		Classify: func(r *cache.Request) string {
			if r.GetTypeUrl() == resource.EndpointType {
				return "eds"
			}
			return "snapshot"
		},
		ClassifyDelta: func(r *cache.DeltaRequest) string {
			if r.GetTypeUrl() == resource.EndpointType {
				return "eds"
			}
			return "snapshot"
		},
		Caches: map[string]cache.Cache{"eds": p.linear, "snapshot": p.snapshot},
	}
}

// change replaces `old` by `new` in every payload of `typeURL` holding it and hands
// the new resources to the caches.
func (p *peer) change(typeURL string, old, new []byte) error {
	changed := map[int]bool{}
	for i, raw := range p.raw {
		if p.typeOf[i] == typeURL && bytes.Contains(raw, old) {
			p.raw[i] = bytes.ReplaceAll(raw, old, new)
			if err := p.decode(i); err != nil {
				return err
			}
			changed[i] = true
		}
	}
	if len(changed) == 0 {
		return nil
	}
	if typeURL == resource.EndpointType && p.linear != nil {
		update := map[string]types.Resource{}
		for name, i := range p.edsOwner {
			if changed[i] {
				update[name] = p.msgs[i]
			}
		}
		return p.linear.UpdateResources(update, nil)
	}
	classes := make([]string, 0, len(p.classes))
	for class, byType := range p.classes {
		for _, i := range byType[typeURL] {
			if changed[i] {
				classes = append(classes, class)
				break
			}
		}
	}
	sort.Strings(classes)
	for _, class := range classes {
		if err := p.setSnapshot(class, map[string]bool{typeURL: true}); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	capturePath := flag.String("capture", "", "the capture file written by load.py")
	port := flag.Int("port", 0, "the ADS port (127.0.0.1)")
	flag.Parse()
	p, err := load(*capturePath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gcp-peer:", err)
		os.Exit(2)
	}
	mode := "snapshot cache (EDS too: classes differ)"
	if p.linear != nil {
		mode = "snapshot cache + linear cache for EDS"
	}
	fmt.Fprintf(os.Stderr, "gcp-peer: %d classes, %d payloads, %s\n", len(p.classes), len(p.raw), mode)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	srv := server.NewServer(ctx, p.cache(), nil)
	g := grpc.NewServer(
		grpc.MaxConcurrentStreams(1<<20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{PermitWithoutStream: true}),
	)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, srv)
	lis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "gcp-peer:", err)
		os.Exit(2)
	}
	go func() { _ = g.Serve(lis) }()
	fmt.Println("ready")

	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	for {
		select {
		case <-ctx.Done():
			g.Stop()
			return
		case line, ok := <-lines:
			if !ok {
				g.Stop()
				return
			}
			f := strings.Fields(line)
			if len(f) != 3 {
				fmt.Fprintln(os.Stderr, "gcp-peer: bad command:", line)
				continue
			}
			typeURL := map[string]string{"eds": resource.EndpointType, "rds": resource.RouteType}[f[0]]
			if typeURL == "" {
				fmt.Fprintln(os.Stderr, "gcp-peer: bad command:", line)
				continue
			}
			if err := p.change(typeURL, []byte(f[1]), []byte(f[2])); err != nil {
				fmt.Fprintln(os.Stderr, "gcp-peer:", err)
			}
		}
	}
}
