package livekit

import (
	"net/url"
	"testing"
	"time"
)

func TestZZDebug(t *testing.T) {
	e := Start(t, DefaultOptions())
	time.Sleep(35 * time.Second)
	for _, h := range Histograms {
		for _, q := range []string{
			"sum by (direction, le) (increase(" + h.Name + "_bucket[25s]))",
			"sum by (direction) (increase(" + h.Name + "_count[25s]))",
		} {
			var data struct {
				Result []struct {
					Metric map[string]string `json:"metric"`
					Value  [2]any            `json:"value"`
				} `json:"result"`
			}
			if err := e.Prom.API(t.Context(), "/api/v1/query?query="+url.QueryEscape(q), &data); err != nil {
				t.Fatal(err)
			}
			for _, r := range data.Result {
				t.Logf("%s %v %v", h.Name, r.Metric, r.Value[1])
			}
		}
	}
	for _, q := range []string{"livekit_packet_total", "livekit_nack_total", "livekit_packet_loss_total"} {
		var data struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		}
		_ = e.Prom.API(t.Context(), "/api/v1/query?query="+url.QueryEscape(q), &data)
		for _, r := range data.Result {
			t.Logf("%s %v %v", q, r.Metric, r.Value[1])
		}
	}
	t.Log(e.Publishers.Tail(5))
	t.Log(e.Subscribers.Tail(5))
}
