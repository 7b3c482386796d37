package testserver

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald/internal/testenv"
)

// PortBlock returns the first of n consecutive ports in [lo, hi) that are
// all free on 127.0.0.1 (and so are their +offset companions when offset is
// not 0, such as a Redis Cluster's bus ports, +10000), so that servers of a
// test keep to the port range their package was given even when a crashed
// run left something behind. Blocks are tried n apart.
// A block is reserved for its test until the test ends, so that parallel
// tests of one package never get the same block before their servers
// listen.
func PortBlock(t testing.TB, lo, hi, n, offset int) int {
	t.Helper()
	reservedMu.Lock()
	defer reservedMu.Unlock()
	for base := lo; base+n <= hi; base += n {
		if !reserved[base] && blockFree(base, n, offset) {
			reserved[base] = true
			t.Cleanup(func() {
				reservedMu.Lock()
				delete(reserved, base)
				reservedMu.Unlock()
			})
			return base
		}
	}
	t.Fatalf("no %d free ports in 127.0.0.1:%d-%d", n, lo, hi-1)
	return 0
}

var (
	reservedMu sync.Mutex
	reserved   = make(map[int]bool) // first ports of the blocks PortBlock handed out
)

func blockFree(base, n, offset int) bool {
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for p := base; p < base+n; p++ {
		ports := []int{p}
		if offset != 0 {
			ports = append(ports, p+offset)
		}
		for _, q := range ports {
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(q)))
			if err != nil {
				return false
			}
			held = append(held, l)
		}
	}
	return true
}

// RedisAt starts a redis-server without persistence on port, plus args.
func RedisAt(t testing.TB, port int, args ...string) *Server {
	t.Helper()
	s := newServer(t, "redis-server", testenv.RedisVar)
	s.port = port
	s.args = func(bool) []string {
		a := []string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir, "--save", "", "--appendonly", "no",
			"--daemonize", "no", "--logfile", filepath.Join(s.dir, "redis.log")}
		return append(a, args...)
	}
	s.Start(true)
	return s
}

// RedisCluster starts n redis-servers on the ports from base (bus ports
// base+10000 on), joins them into a Cluster of n masters without replicas
// (redis-cli --cluster create), and waits until every node reports
// cluster_state:ok. A master that is down fails only its own slots
// (cluster-require-full-coverage no). The servers are killed when the test
// ends; one started again after Kill rejoins with its node id (its
// nodes.conf is kept), without data.
func RedisCluster(t testing.TB, base, n int) []*Server {
	t.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		if testenv.Required(testenv.RedisVar) {
			t.Fatalf("redis-cli not found, and %s is set: install it (Debian: apt-get install redis-tools)", testenv.RedisVar)
		}
		t.Skip("redis-cli not found: this test creates a Redis Cluster with it (Debian: apt-get install redis-tools)")
	}
	var nodes []*Server
	var addrs []string
	for i := range n {
		s := RedisAt(t, base+i, clusterArgs...)
		nodes = append(nodes, s)
		addrs = append(addrs, s.Addr())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	waitClusterOK(t, nodes, "")
	return nodes
}

// clusterArgs are the redis-server arguments of a Cluster node.
var clusterArgs = []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
	// A master that is down fails only its slots (the default fails them all).
	"--cluster-require-full-coverage", "no"}

// waitClusterOK waits up to 30 s until every node reports cluster_state:ok
// and, if id is not empty, lists the node id in CLUSTER NODES.
func waitClusterOK(t testing.TB, nodes []*Server, id string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range nodes {
		for {
			info, err := redisCommand(s.Addr(), "CLUSTER", "INFO")
			known := id == ""
			if err == nil && !known {
				out, err2 := redisCommand(s.Addr(), "CLUSTER", "NODES")
				known = err2 == nil && strings.Contains(out, id)
			}
			if err == nil && known && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: cluster_state not ok (or node %q unknown) within 30s: %q %v", s, id, info, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// AddClusterMaster starts a redis-server on port (bus port port+10000),
// joins it to the Cluster of nodes as a master without slots (redis-cli
// --cluster add-node), and waits until every node knows it. Give it slots
// with MoveSlot.
func AddClusterMaster(t testing.TB, nodes []*Server, port int) *Server {
	t.Helper()
	s := RedisAt(t, port, clusterArgs...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "redis-cli", "--cluster", "add-node", s.Addr(), nodes[0].Addr()).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster add-node: %v\n%s", err, out)
	}
	waitClusterOK(t, append(slices.Clone(nodes), s), NodeID(t, s))
	return s
}

// redisCommand sends one command (inline) and returns the reply's text:
// enough for CLUSTER INFO's bulk string.
func redisCommand(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\r\n", strings.Join(args, " ")); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(line, "$") {
		return line, nil
	}
	size, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil || size < 0 {
		return line, err
	}
	buf := make([]byte, size+2)
	_, err = io.ReadFull(r, buf)
	return string(buf), err
}

// FirstSlot returns the first slot a Cluster node serves, from CLUSTER
// NODES ("myself" line), or -1.
func FirstSlot(t testing.TB, s *Server) int {
	t.Helper()
	out, err := redisCommand(s.Addr(), "CLUSTER", "NODES")
	if err != nil {
		t.Fatalf("%s: CLUSTER NODES: %v", s, err)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 8 && strings.Contains(f[2], "myself") {
			first, _, _ := strings.Cut(f[8], "-")
			n, err := strconv.Atoi(first)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// AddClusterReplica starts a redis-server on port (bus port port+10000),
// joins it to the Cluster of nodes as a replica of master, and waits until
// it has synced with it.
func AddClusterReplica(t testing.TB, nodes []*Server, port int, master *Server) *Server {
	t.Helper()
	s := RedisAt(t, port, clusterArgs...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "redis-cli", "--cluster", "add-node", s.Addr(), master.Addr(),
		"--cluster-slave", "--cluster-master-id", NodeID(t, master)).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster add-node --cluster-slave: %v\n%s", err, out)
	}
	waitClusterOK(t, append(slices.Clone(nodes), s), NodeID(t, s))
	waitFor(t, s, "INFO", "replication", "master_link_status:up")
	return s
}

// Failover makes replica the master of its master's slots by a manual
// failover (CLUSTER FAILOVER, which first lets it catch up with the
// master: nothing acknowledged is lost), and waits until it reports
// itself master. A master votes once per two node timeouts for one set of
// slots, so a failover soon after another may be aborted (after 5 s): it
// is asked again, for up to 45 s.
func Failover(t testing.TB, replica *Server) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		if out, err := redisCommand(replica.Addr(), "CLUSTER", "FAILOVER"); err != nil || !strings.HasPrefix(out, "+OK") {
			t.Fatalf("%s: CLUSTER FAILOVER: %q %v", replica, out, err)
		}
		for try := time.Now().Add(7 * time.Second); time.Now().Before(try); time.Sleep(50 * time.Millisecond) {
			if out, err := redisCommand(replica.Addr(), "INFO", "replication"); err == nil && strings.Contains(out, "role:master") {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not master 45s after CLUSTER FAILOVER", replica)
		}
	}
}

// waitFor waits up to 30 s until the reply of a command to s contains want.
func waitFor(t testing.TB, s *Server, cmd, arg, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := redisCommand(s.Addr(), cmd, arg)
		if err == nil && strings.Contains(out, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s %s has no %q within 30s: %q %v", s, cmd, arg, want, out, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// NATSCluster starts n nats-servers with JetStream joined by routes into
// one cluster: client ports from clientBase, route ports from routeBase,
// each store in a directory of the test's. It waits until JetStream has a
// meta leader (an account info request succeeds on every server). Kill
// and Start(true) restart one server on its store.
func NATSCluster(t testing.TB, clientBase, routeBase, n int) []*Server {
	t.Helper()
	var routes []string
	for i := range n {
		routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(routeBase+i))
	}
	var srvs []*Server
	for i := range n {
		s := newServer(t, "nats-server", testenv.NATSVar)
		s.port = clientBase + i
		others := slices.Delete(slices.Clone(routes), i, i+1)
		s.args = func(keepData bool) []string {
			store := filepath.Join(s.dir, "store")
			if !keepData {
				_ = os.RemoveAll(store)
			}
			return []string{"-a", "127.0.0.1", "-p", strconv.Itoa(s.port), "-n", "herald-test-" + strconv.Itoa(i),
				"-js", "-sd", store, "--cluster_name", "herald-test", "--cluster", routes[i],
				"--routes", strings.Join(others, ","), "-l", filepath.Join(s.dir, "nats.log")}
		}
		s.Start(true)
		srvs = append(srvs, s)
		t.Cleanup(func() { // registered after Kill's: runs before it
			if t.Failed() {
				log, _ := os.ReadFile(filepath.Join(s.dir, "nats.log"))
				if len(log) > 6000 {
					log = log[len(log)-6000:]
				}
				t.Logf("%s log (end):\n%s", s, log)
			}
		})
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range srvs {
		for {
			err := jetStreamReady(s.Addr())
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: JetStream not ready within 30s: %v", s, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return srvs
}

func jetStreamReady(addr string) error {
	nc, err := nats.Connect("nats://"+addr, nats.Timeout(time.Second), nats.NoReconnect())
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err
}

// KeySlot returns the Cluster slot of key (CLUSTER KEYSLOT on s).
func KeySlot(t testing.TB, s *Server, key string) int {
	t.Helper()
	out, err := redisCommand(s.Addr(), "CLUSTER", "KEYSLOT", key)
	n, err2 := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(out, ":")))
	if err != nil || err2 != nil {
		t.Fatalf("%s: CLUSTER KEYSLOT %s: %q %v", s, key, out, err)
	}
	return n
}

// SlotOwner returns the node of nodes that serves slot, from its own
// CLUSTER NODES line ("myself"), or nil.
func SlotOwner(t testing.TB, nodes []*Server, slot int) *Server {
	t.Helper()
	for _, s := range nodes {
		out, err := redisCommand(s.Addr(), "CLUSTER", "NODES")
		if err != nil {
			t.Fatalf("%s: CLUSTER NODES: %v", s, err)
		}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) < 9 || !strings.Contains(f[2], "myself") {
				continue
			}
			for _, r := range f[8:] {
				first, last, ok := strings.Cut(r, "-")
				if !ok {
					last = first
				}
				lo, err1 := strconv.Atoi(first)
				hi, err2 := strconv.Atoi(last)
				if err1 == nil && err2 == nil && lo <= slot && slot <= hi {
					return s
				}
			}
		}
	}
	return nil
}

// NodeID returns a Cluster node's id (CLUSTER MYID).
func NodeID(t testing.TB, s *Server) string {
	t.Helper()
	id, err := redisCommand(s.Addr(), "CLUSTER", "MYID")
	if err != nil {
		t.Fatalf("%s: CLUSTER MYID: %v", s, err)
	}
	return strings.TrimSpace(id)
}

// MoveSlot moves slot, with its keys, from the Cluster node from to the
// node to, as redis-cli --cluster reshard does for each slot: IMPORTING
// and MIGRATING, MIGRATE of its keys, then SETSLOT NODE on every node.
func MoveSlot(t testing.TB, nodes []*Server, slot int, from, to *Server) {
	t.Helper()
	cli := func(s *Server, args ...string) string {
		t.Helper()
		host, port, _ := net.SplitHostPort(s.Addr())
		out, err := exec.Command("redis-cli", append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
		if err != nil || strings.HasPrefix(string(out), "ERR") {
			t.Fatalf("redis-cli %v on %s: %v %s", args, s, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	sl, fromID, toID := strconv.Itoa(slot), NodeID(t, from), NodeID(t, to)
	cli(to, "CLUSTER", "SETSLOT", sl, "IMPORTING", fromID)
	cli(from, "CLUSTER", "SETSLOT", sl, "MIGRATING", toID)
	toHost, toPort, _ := net.SplitHostPort(to.Addr())
	for {
		keys := strings.Fields(cli(from, "CLUSTER", "GETKEYSINSLOT", sl, "100"))
		if len(keys) == 0 {
			break
		}
		cli(from, append([]string{"MIGRATE", toHost, toPort, "", "0", "5000", "KEYS"}, keys...)...)
	}
	// The new owner first, then the old one, then the others.
	cli(to, "CLUSTER", "SETSLOT", sl, "NODE", toID)
	cli(from, "CLUSTER", "SETSLOT", sl, "NODE", toID)
	for _, n := range nodes {
		if n != to && n != from {
			cli(n, "CLUSTER", "SETSLOT", sl, "NODE", toID)
		}
	}
}
