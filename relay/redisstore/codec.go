package redisstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/hookrelay/hookrelay/relay"
)

// messageVersion leads every encoded message so that the layout can change later. Version 1 (earlier
// releases) had no headers; version 2 ends with the forwarded headers.
const (
	messageV1      = 1
	messageVersion = 2
)

// encodeMessage encodes the immutable part of a delivery once, in Go: Lua only copies the bytes.
// Length-prefixed fields, varints for numbers, seconds and nanoseconds for ReceivedAt (exact,
// unlike the microsecond scores). Compared with JSON it does not base64 the body, so a 400-byte
// body stays 400 bytes in Redis' memory.
func encodeMessage(m *relay.Message) []byte {
	b := make([]byte, 0, 64+len(m.ID)+len(m.Route)+len(m.Provider)+len(m.JobID)+len(m.JobStatus)+
		len(m.ContentType)+len(m.SourceAddr)+len(m.Body)+16*len(m.Targets))
	b = append(b, messageVersion)
	for _, s := range []string{m.ID, m.Route, m.Provider, m.JobID, m.JobStatus, m.ContentType, m.SourceAddr} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = binary.AppendVarint(b, m.ReceivedAt.Unix())
	b = binary.AppendUvarint(b, uint64(m.ReceivedAt.Nanosecond()))
	b = binary.AppendUvarint(b, uint64(len(m.Body)))
	b = append(b, m.Body...)
	b = binary.AppendUvarint(b, uint64(len(m.Targets)))
	for _, t := range m.Targets {
		b = binary.AppendUvarint(b, uint64(len(t)))
		b = append(b, t...)
	}
	b = binary.AppendUvarint(b, uint64(len(m.Headers)))
	for _, name := range slices.Sorted(maps.Keys(m.Headers)) {
		b = binary.AppendUvarint(b, uint64(len(name)))
		b = append(b, name...)
		b = binary.AppendUvarint(b, uint64(len(m.Headers[name])))
		for _, v := range m.Headers[name] {
			b = binary.AppendUvarint(b, uint64(len(v)))
			b = append(b, v...)
		}
	}
	return b
}

var errCorrupt = errors.New("corrupt message encoding")

// decodeMessage decodes what encodeMessage wrote. The result shares nothing with s.
func decodeMessage(s string) (relay.Message, error) {
	var m relay.Message
	if len(s) == 0 || (s[0] != messageVersion && s[0] != messageV1) {
		return m, errors.New("unknown message encoding version")
	}
	version := s[0]
	d := decoder{s: s[1:]}
	for _, p := range []*string{&m.ID, &m.Route, &m.Provider, &m.JobID, &m.JobStatus, &m.ContentType, &m.SourceAddr} {
		*p = d.str()
	}
	sec := d.varint()
	nsec := d.uvarint()
	if nsec >= 1e9 {
		d.err = errCorrupt
	}
	m.ReceivedAt = time.Unix(sec, int64(nsec)).UTC()
	m.Body = []byte(d.str())
	n := d.uvarint()
	if n > uint64(len(d.s)) { // each target takes at least one byte: no huge allocation
		d.err = errCorrupt
	}
	if d.err == nil {
		m.Targets = make([]string, n)
		for i := range m.Targets {
			m.Targets[i] = d.str()
		}
	}
	if version == messageVersion {
		m.Headers = d.headers()
	}
	if d.err == nil && len(d.s) != 0 {
		d.err = errCorrupt
	}
	if d.err != nil {
		return relay.Message{}, d.err
	}
	return m, nil
}

// decoder reads fields off s; the first problem sticks in err and later reads return zeros.
type decoder struct {
	s   string
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint([]byte(d.s[:min(len(d.s), binary.MaxVarintLen64)]))
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.s = d.s[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint([]byte(d.s[:min(len(d.s), binary.MaxVarintLen64)]))
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.s = d.s[n:]
	return v
}

func (d *decoder) str() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.s)) {
		d.err = errCorrupt
		return ""
	}
	v := d.s[:n]
	d.s = d.s[n:]
	return v
}

// Times in scores and the scalar fields are microseconds since the epoch: Lua numbers and sorted
// set scores are doubles, exact only to 2^53, which unix nanoseconds exceed and microseconds do
// not (until the year 2255). Truncation (floor) everywhere keeps comparisons consistent: a
// delivery due at t is claimable at any now with micros(now) >= micros(t).
func micros(t time.Time) string { return strconv.FormatInt(t.UnixMicro(), 10) }

// ceilMicros is the first microsecond at or after t.
func ceilMicros(t time.Time) int64 {
	us := t.UnixMicro()
	if t.Nanosecond()%1000 != 0 {
		us++
	}
	return us
}

// deadKey is a dead letter's time as 16 hex digits that sort like the time (the sign bit flipped,
// so that even times before 1970 sort right). The dead set's members are deadKey+ID and all have
// score 0, so the set sorts by death time then ID byte for byte, and ZRANGE BYLEX can resume after
// any member, even one removed since.
func deadKey(us int64) string {
	return fmt.Sprintf("%016x", uint64(us)^(1<<63))
}

func parseDeadKey(s string) (time.Time, error) {
	if len(s) != 16 {
		return time.Time{}, fmt.Errorf("bad dead time %q", s)
	}
	u, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("bad dead time %q", s)
	}
	return time.UnixMicro(int64(u ^ (1 << 63))).UTC(), nil
}

// pxMillis is a dedupe key's real time to live in Redis: ttl rounded up to a millisecond, so that
// Redis does not forget a key before the logical expiry (ReceivedAt+ttl) while the clocks agree.
func pxMillis(ttl time.Duration) int64 {
	ms := int64(ttl / time.Millisecond)
	if ttl%time.Millisecond != 0 {
		ms++
	}
	return ms
}

// headers reads what encodeMessage wrote after the targets; nil when there are none.
func (d *decoder) headers() http.Header {
	n := d.uvarint()
	if d.err != nil || n == 0 {
		return nil
	}
	if n > uint64(len(d.s)) { // each header takes at least two bytes: no huge allocation
		d.err = errCorrupt
		return nil
	}
	h := make(http.Header, n)
	for range n {
		name := d.str()
		k := d.uvarint()
		if d.err != nil || k > uint64(len(d.s)) {
			d.err = errCorrupt
			return nil
		}
		v := make([]string, k)
		for i := range v {
			v[i] = d.str()
		}
		h[name] = v
	}
	return h
}
