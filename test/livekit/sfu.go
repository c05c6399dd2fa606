package livekit

import (
	"fmt"
	"net"
	"strconv"
)

// LiveKit's ports inside the SFU's namespace. Nothing else listens there,
// so they are fixed.
const (
	SignalPort     = 7880 // HTTP and WebSocket signalling
	rtcTCPPort     = 7881 // ICE over TCP, LiveKit's fallback
	rtcUDPPort     = 7882 // every ICE/RTP flow, multiplexed on one port
	PrometheusPort = 6789 // /metrics
)

// DevAPIKey and DevAPISecret are the keys livekit-server --dev signs
// with when the configuration names none.
const (
	DevAPIKey    = "devkey"
	DevAPISecret = "secret"
)

// sfuConfig is livekit-server's configuration: everything on the SFU's
// one address, which it advertises as its only ICE candidate.
//
//   - use_external_ip false: there is no STUN server to ask, and the
//     address to advertise is known.
//   - congestion_control off: LiveKit's stream allocator would react to
//     the bottleneck by pausing or re-allocating forwarded streams; the
//     point here is to let the bottleneck's queueing and drops show in
//     the subscribers' receiver reports.
//   - prometheus.port: prometheus_port in older configurations; v1.13.5
//     warns that that key is deprecated and copies it to this one.
//   - --dev (on the command line) supplies the devkey/secret pair, and,
//     with a non-loopback bind address, limits RTC to that address's /24.
func sfuConfig(sfu net.IP) string {
	ip := sfu.String()
	return fmt.Sprintf(`port: %d
bind_addresses: [%q]
prometheus:
  port: %d
rtc:
  tcp_port: %d
  udp_port: %d
  node_ip: %q
  use_external_ip: false
  enable_loopback_candidate: false
  ips:
    includes: [%q]
  congestion_control:
    enabled: false
logging:
  level: info
  pion_level: warn
`, SignalPort, ip, PrometheusPort, rtcTCPPort, rtcUDPPort, ip, ip+"/32")
}

func hostPort(ip net.IP, port int) string {
	return net.JoinHostPort(ip.String(), strconv.Itoa(port))
}
