/* edgegov serial protocol v1: reference implementation (see edgegov_frame.h). */
#include "edgegov_frame.h"

#include <string.h>

uint32_t eg_crc32(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
}

size_t eg_cobs_encode(const uint8_t *in, size_t len, uint8_t *out) {
    uint8_t *code_p = out, *o = out + 1, code = 1;
    while (len--) {
        uint8_t b = *in++;
        if (b) { *o++ = b; code++; }
        if (!b || code == 0xFF) {
            *code_p = code; code = 1; code_p = o;
            if (!b || len) o++;
        }
    }
    *code_p = code;
    return (size_t)(o - out);
}

int eg_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len) {
    size_t i = 0, o = 0;
    if (len == 0) return -1;
    for (;;) {
        uint8_t code = in[i];
        size_t j;
        if (code == 0) return -1;
        j = i + code;
        if (j > len) return -1;
        for (size_t k = i + 1; k < j; k++) {
            if (in[k] == 0 || o >= cap) return -1;
            out[o++] = in[k];
        }
        if (j == len) { *out_len = o; return 0; }
        if (code != 0xFF) {
            if (o >= cap) return -1;
            out[o++] = 0;
        }
        i = j;
    }
}

/* ---- encoding --------------------------------------------------------- */
static void put(eg_writer *w, const uint8_t *p, size_t n) {
    if (w->overflow || w->len + n > EG_MAX_FRAME - 4) { w->overflow = 1; return; }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}

void eg_put_u8(eg_writer *w, uint8_t v) { put(w, &v, 1); }

void eg_put_u16(eg_writer *w, uint16_t v) {
    uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    put(w, b, 2);
}

void eg_put_u32(eg_writer *w, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(w, b, 4);
}

static void put_u64(eg_writer *w, uint64_t v) {
    eg_put_u32(w, (uint32_t)v);
    eg_put_u32(w, (uint32_t)(v >> 32));
}

void eg_put_f32(eg_writer *w, float v) {
    uint32_t bits;
    memcpy(&bits, &v, 4); /* IEEE 754 binary32, sent little-endian (§1) */
    eg_put_u32(w, bits);
}

void eg_put_str(eg_writer *w, const char *s, size_t len) {
    if (len > 255) { w->overflow = 1; return; }
    eg_put_u8(w, (uint8_t)len);
    put(w, (const uint8_t *)s, len);
}

void eg_begin(eg_writer *w, uint8_t type, uint32_t seq, uint64_t timestamp_ms) {
    w->len = 0;
    w->overflow = 0;
    eg_put_u8(w, EG_PROTOCOL_VERSION);
    eg_put_u8(w, type);
    eg_put_u32(w, seq);
    put_u64(w, timestamp_ms);
}

size_t eg_finish(eg_writer *w, uint8_t *wire) {
    uint32_t crc;
    size_t n;
    if (w->overflow) return 0;
    crc = eg_crc32(w->buf, w->len);
    w->buf[w->len + 0] = (uint8_t)crc;
    w->buf[w->len + 1] = (uint8_t)(crc >> 8);
    w->buf[w->len + 2] = (uint8_t)(crc >> 16);
    w->buf[w->len + 3] = (uint8_t)(crc >> 24);
    n = eg_cobs_encode(w->buf, w->len + 4, wire);
    wire[n] = 0;
    return n + 1;
}

/* ---- decoding --------------------------------------------------------- */
void eg_reader_init(eg_reader *r, const eg_frame *f) {
    r->p = f->payload;
    r->left = f->payload_len;
    r->bad = 0;
}

static const uint8_t *take(eg_reader *r, size_t n) {
    const uint8_t *p = r->p;
    if (r->bad || r->left < n) { r->bad = 1; return NULL; }
    r->p += n;
    r->left -= n;
    return p;
}

uint8_t eg_get_u8(eg_reader *r) {
    const uint8_t *p = take(r, 1);
    return p ? p[0] : 0;
}

uint16_t eg_get_u16(eg_reader *r) {
    const uint8_t *p = take(r, 2);
    return p ? (uint16_t)(p[0] | (p[1] << 8)) : 0;
}

uint32_t eg_get_u32(eg_reader *r) {
    const uint8_t *p = take(r, 4);
    return p ? (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                   ((uint32_t)p[3] << 24)
             : 0;
}

float eg_get_f32(eg_reader *r) {
    uint32_t bits = eg_get_u32(r);
    float v;
    memcpy(&v, &bits, 4);
    return v;
}

void eg_get_str(eg_reader *r, const uint8_t **s, uint8_t *len) {
    *len = eg_get_u8(r);
    *s = take(r, *len);
    if (!*s) *len = 0;
}

/* Strict UTF-8 (RFC 3629): no overlongs, surrogates or values past U+10FFFF. */
static int utf8_ok(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xE0) == 0xC0) { k = 1; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { k = 2; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { k = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        if (i + k >= n) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += k + 1;
    }
    return 1;
}

static int str_ok(eg_reader *r) {
    const uint8_t *s;
    uint8_t n;
    eg_get_str(r, &s, &n);
    return !r->bad && utf8_ok(s, n);
}

/* Does the payload have exactly the shape of its type (§4)? */
static int payload_ok(const eg_frame *f) {
    eg_reader r;
    eg_reader_init(&r, f);
    switch (f->type) {
    case EG_HELLO: {
        uint8_t n;
        if (!str_ok(&r) || !str_ok(&r)) return 0;
        (void)eg_get_u8(&r); /* max_version */
        n = eg_get_u8(&r);
        for (unsigned i = 0; i < n; i++) {
            if (!str_ok(&r) || !str_ok(&r)) return 0;
            if (eg_get_u8(&r) > EG_KIND_BOOLEAN) return 0;
            (void)eg_get_u32(&r);
            (void)eg_get_u32(&r);
        }
        break;
    }
    case EG_DATA: {
        uint8_t nc = eg_get_u8(&r), ns = eg_get_u8(&r);
        (void)eg_get_u16(&r);
        if (r.bad || ns == 0 || r.left != 4u * nc * ns) return 0;
        return 1;
    }
    case EG_HEARTBEAT:
    case EG_ACK:
        (void)eg_get_u32(&r);
        break;
    case EG_ERROR:
        (void)eg_get_u16(&r);
        if (!str_ok(&r)) return 0;
        break;
    case EG_COMMAND: {
        uint8_t n;
        (void)eg_get_u8(&r);
        n = eg_get_u8(&r);
        (void)take(&r, n);
        break;
    }
    default:
        return 0;
    }
    return !r.bad && r.left == 0;
}

static int known_type(uint8_t t) {
    return t == EG_HELLO || t == EG_DATA || t == EG_HEARTBEAT || t == EG_ERROR || t == EG_ACK ||
           t == EG_COMMAND;
}

eg_status eg_decode(const uint8_t *seg, size_t len, eg_frame *f) {
    size_t n, end;
    uint32_t crc;
    const uint8_t *h;
    if (len > EG_MAX_ENCODED || eg_cobs_decode(seg, len, f->raw, EG_MAX_FRAME, &n) != 0 ||
        n < EG_MIN_FRAME)
        return EG_ERR_FRAMING;
    end = n - 4;
    crc = (uint32_t)f->raw[end] | ((uint32_t)f->raw[end + 1] << 8) |
          ((uint32_t)f->raw[end + 2] << 16) | ((uint32_t)f->raw[end + 3] << 24);
    if (eg_crc32(f->raw, end) != crc) return EG_ERR_CRC;
    h = f->raw;
    f->raw_len = n;
    f->version = h[0];
    f->type = h[1];
    f->seq = (uint32_t)h[2] | ((uint32_t)h[3] << 8) | ((uint32_t)h[4] << 16) |
             ((uint32_t)h[5] << 24);
    f->timestamp_ms = 0;
    for (int i = 7; i >= 0; i--) f->timestamp_ms = (f->timestamp_ms << 8) | h[6 + i];
    f->payload = h + EG_HEADER_LEN;
    f->payload_len = end - EG_HEADER_LEN;
    if (f->version != EG_PROTOCOL_VERSION) return EG_ERR_VERSION;
    if (!known_type(f->type)) return EG_ERR_TYPE;
    return payload_ok(f) ? EG_OK : EG_ERR_FRAMING;
}

void eg_stream_init(eg_stream *s) {
    s->len = 0;
    s->skipping = 0;
}

eg_status eg_stream_push(eg_stream *s, uint8_t byte, eg_frame *f) {
    if (byte == 0) {
        size_t n = s->len;
        int skipped = s->skipping;
        s->len = 0;
        s->skipping = 0;
        if (skipped || n == 0) return EG_MORE; /* oversized run already reported; empty frame */
        return eg_decode(s->buf, n, f);
    }
    if (s->skipping) return EG_MORE;
    if (s->len == EG_MAX_ENCODED) {
        s->skipping = 1; /* no frame is this long (§2.2) */
        s->len = 0;
        return EG_ERR_FRAMING;
    }
    s->buf[s->len++] = byte;
    return EG_MORE;
}
