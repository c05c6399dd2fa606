package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
)

// counters are what a run has done so far, logged every StatsEvery.
type counters struct {
	sent, skipped, bytesSent atomic.Int64
	received, bytesReceived  atomic.Int64
	tracks                   atomic.Int64 // subscribed, over all subscribers
}

func (c *counters) log(log *slog.Logger, msg string) {
	log.Info(msg, "packets_sent", c.sent.Load(), "packets_skipped", c.skipped.Load(), "bytes_sent", c.bytesSent.Load(),
		"tracks_subscribed", c.tracks.Load(), "packets_received", c.received.Load(), "bytes_received", c.bytesReceived.Load())
}

// run joins every participant, then sends and reads until ctx ends or
// Duration passes.
func run(ctx context.Context, cfg *config, log *slog.Logger) error {
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	epoch := time.Now()
	var c counters
	var wg sync.WaitGroup
	var rooms []*lksdk.Room
	defer func() {
		for _, r := range rooms {
			r.Disconnect()
		}
	}()
	for i := range cfg.Subscribers {
		r, err := subscribe(cfg, fmt.Sprintf("%ssub-%d", cfg.Identity, i), &c, &wg, log)
		if err != nil {
			return err
		}
		rooms = append(rooms, r)
	}
	for i := range cfg.Publishers {
		identity := fmt.Sprintf("%spub-%d", cfg.Identity, i)
		r, track, err := publish(cfg, identity)
		if err != nil {
			return err
		}
		rooms = append(rooms, r)
		wg.Go(func() {
			if err := send(ctx, track, newPacer(cfg.pacing, epoch, i), cfg.Frame, &c); err != nil {
				log.Error("publisher stopped", "identity", identity, "err", err)
			}
		})
	}
	log.Info("joined", "room", cfg.Room, "publishers", cfg.Publishers, "subscribers", cfg.Subscribers)
	if cfg.StatsEvery > 0 {
		t := time.NewTicker(cfg.StatsEvery)
		defer t.Stop()
	loop:
		for {
			select {
			case <-ctx.Done():
				break loop
			case <-t.C:
				c.log(log, "counters")
			}
		}
	}
	<-ctx.Done()
	for _, r := range rooms {
		r.Disconnect()
	}
	rooms = nil
	wg.Wait()
	c.log(log, "done")
	return nil
}

func connectInfo(cfg *config, identity string) lksdk.ConnectInfo {
	return lksdk.ConnectInfo{APIKey: cfg.APIKey, APISecret: cfg.APISecret, RoomName: cfg.Room, ParticipantIdentity: identity}
}

// publish joins as identity with one Opus track and no subscriptions.
func publish(cfg *config, identity string) (*lksdk.Room, *lksdk.LocalTrack, error) {
	room, err := lksdk.ConnectToRoom(cfg.URL, connectInfo(cfg, identity), lksdk.NewRoomCallback(), lksdk.WithAutoSubscribe(false))
	if err != nil {
		return nil, nil, fmt.Errorf("%s joining %s: %w", identity, cfg.URL, err)
	}
	track, err := lksdk.NewLocalTrack(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2})
	if err != nil {
		room.Disconnect()
		return nil, nil, err
	}
	if _, err := room.LocalParticipant.PublishTrack(track, &lksdk.TrackPublicationOptions{
		Name: "synthetic", Source: livekit.TrackSource_MICROPHONE,
		// DTX would let the SFU read a silent stream's gaps as discontinuous
		// transmission; these gaps are meant to be jitter.
		DisableDTX: true,
	}); err != nil {
		room.Disconnect()
		return nil, nil, fmt.Errorf("%s publishing: %w", identity, err)
	}
	return room, track, nil
}

// send writes packets through the SDK's sample writer as the pacer plans
// them: the RTP timestamp follows media time (Duration per packet), the
// send time does not, and a skipped packet advances the sequence number
// and the timestamp of the next one (PrevDroppedPackets).
func send(ctx context.Context, track *lksdk.LocalTrack, p *pacer, frame time.Duration, c *counters) error {
	payload := make([]byte, maxPayload)
	fill := rand.New(rand.NewPCG(p.rng.Uint64(), p.rng.Uint64()))
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	var dropped uint16
	for due := time.Now(); ; due = due.Add(frame) {
		pk := p.plan(due)
		if d := time.Until(pk.SendAt); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				return nil
			case <-timer.C:
			}
		} else if ctx.Err() != nil {
			return nil
		}
		if pk.Skip {
			dropped++
			c.skipped.Add(1)
			continue
		}
		for i := 0; i < pk.Size; i += 8 {
			v := fill.Uint64()
			for j := 0; j < 8 && i+j < pk.Size; j++ {
				payload[i+j] = byte(v >> (8 * j))
			}
		}
		if err := track.WriteSample(media.Sample{Data: payload[:pk.Size], Duration: frame, PrevDroppedPackets: dropped}, nil); err != nil {
			if errors.Is(err, io.ErrClosedPipe) {
				return nil
			}
			return err
		}
		dropped = 0
		c.sent.Add(1)
		c.bytesSent.Add(int64(pk.Size))
	}
}

// subscribe joins as identity, subscribing to every track, and reads each
// track until it ends: reading drives the interceptors that send receiver
// reports and NACKs back to the SFU.
func subscribe(cfg *config, identity string, c *counters, wg *sync.WaitGroup, log *slog.Logger) (*lksdk.Room, error) {
	cb := lksdk.NewRoomCallback()
	cb.OnTrackSubscribed = func(track *webrtc.TrackRemote, pub *lksdk.RemoteTrackPublication, rp *lksdk.RemoteParticipant) {
		c.tracks.Add(1)
		log.Debug("subscribed", "identity", identity, "publisher", rp.Identity(), "track", pub.SID())
		wg.Go(func() {
			buf := make([]byte, 1500)
			for {
				n, _, err := track.Read(buf)
				if err != nil {
					return
				}
				c.received.Add(1)
				c.bytesReceived.Add(int64(n))
			}
		})
	}
	room, err := lksdk.ConnectToRoom(cfg.URL, connectInfo(cfg, identity), cb, lksdk.WithAutoSubscribe(true))
	if err != nil {
		return nil, fmt.Errorf("%s joining %s: %w", identity, cfg.URL, err)
	}
	return room, nil
}
