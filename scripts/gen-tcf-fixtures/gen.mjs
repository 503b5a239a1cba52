// Encodes a fixed set of IAB TCF v2 TC strings with the IAB's reference library @iabtcf/core,
// decodes each string again with the same library, and writes what the library reads to
// gateway/tests/fixtures/tcf/iabtcf-core.json. The gateway's own decoder (gateway/src/consent.rs)
// is tested against that file, so the Rust tests never need Node.
//
// Everything is deterministic: a synthetic Global Vendor List (no network), fixed dates, fixed
// vendor sets. Re-running the script must produce a byte-identical file (see README.md).
//
// The library does not report two things the gateway cares about: the MaxVendorId written in
// a vendor section header and which vendor encoding (bit field or range) it chose. Those are
// read here from the bits of the encoded string (`sectionHeader`), using the bit lengths the
// library reports for each decoded section.

import { writeFileSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import {
  Base64Url,
  GVL,
  PurposeRestriction,
  RestrictionType,
  Segment,
  TCModel,
  TCString,
} from '@iabtcf/core';

const here = dirname(fileURLToPath(import.meta.url));
const OUT = join(here, '..', '..', 'gateway', 'tests', 'fixtures', 'tcf', 'iabtcf-core.json');
const LIB_VERSION = JSON.parse(readFileSync(join(here, 'node_modules', '@iabtcf', 'core', 'package.json'), 'utf8')).version;

// ----------------------------------------------------------------------------------------------
// Synthetic Global Vendor List
// ----------------------------------------------------------------------------------------------

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

function named(ids) {
  return Object.fromEntries(ids.map((id) => [String(id), { id, name: `item ${id}`, description: '' }]));
}

/**
 * A vendor list with the given vendor ids. Every vendor declares consent purposes, legitimate
 * interest purposes and flexible purposes, so the library's pre-encoder keeps the vendor
 * consent / LI bits we set and accepts every kind of publisher restriction.
 */
function makeGvl({ vendorIds, vendorListVersion, tcfPolicyVersion, language = 'EN' }) {
  const vendors = {};
  for (const id of vendorIds) {
    vendors[String(id)] = {
      id,
      name: `vendor ${id}`,
      purposes: [1, 3, 4, 9, 10],
      legIntPurposes: [2, 7, 8],
      flexiblePurposes: [2, 7, 9, 10],
      specialPurposes: [1, 2],
      features: [1],
      specialFeatures: [1],
      policyUrl: 'https://example.com/privacy',
    };
  }
  // The consent language written to the string is the GVL's language; GVL reads it from this
  // static when constructed (changeLanguage() would need the network).
  GVL.DEFAULT_LANGUAGE = language;
  GVL.emptyCache();
  const gvl = new GVL({
    gvlSpecificationVersion: 3,
    vendorListVersion,
    tcfPolicyVersion,
    lastUpdated: '2024-01-01T00:00:00Z',
    purposes: named(range(1, 11)),
    specialPurposes: named([1, 2]),
    features: named([1, 2, 3]),
    specialFeatures: named([1, 2]),
    stacks: {},
    vendors,
  });
  GVL.DEFAULT_LANGUAGE = 'EN';
  return gvl;
}

// ----------------------------------------------------------------------------------------------
// Cases
// ----------------------------------------------------------------------------------------------

const utc = (iso) => new Date(iso);

/** Vendor ids spread over 1..1150, deterministic: the kind of set a real CMP writes. */
const spread = (count, step, offset = 1) => range(0, count - 1).map((k) => offset + Math.floor(k * step));

const CASES = [
  {
    name: 'bitfield_dense_core_only',
    description: 'dense vendor sets, both written as bit fields; core segment only',
    gvl: { vendorIds: range(1, 1200), vendorListVersion: 215, tcfPolicyVersion: 4 },
    model: {
      cmpId: 10, cmpVersion: 2, consentScreen: 1, publisherCountryCode: 'DE',
      created: utc('2023-05-04T12:34:56.700Z'), lastUpdated: utc('2024-01-02T03:04:05.600Z'),
      purposeConsents: [1, 2, 3, 4, 7, 8, 9, 10], purposeLegitimateInterests: [2, 7, 8, 9, 10],
      specialFeatureOptins: [1],
      vendorConsents: range(1, 120).filter((i) => i % 7 !== 0),
      vendorLegitimateInterests: range(1, 60).filter((i) => i % 3 === 0),
    },
    segments: [Segment.CORE],
    expectEncoding: { vendorConsents: 'bitField', vendorLegitimateInterests: 'bitField' },
  },
  {
    name: 'range_sparse_high_ids',
    description: 'a few sparse high vendor ids (range encoding) next to a small LI set (bit field); max field values',
    gvl: { vendorIds: range(1, 1200), vendorListVersion: 4095, tcfPolicyVersion: 63, language: 'FR' },
    model: {
      cmpId: 4095, cmpVersion: 4095, consentScreen: 63, publisherCountryCode: 'FR',
      created: utc('2020-08-15T00:00:00.000Z'), lastUpdated: utc('2025-12-31T23:59:59.900Z'),
      purposeConsents: [1], purposeLegitimateInterests: [],
      specialFeatureOptins: [],
      vendorConsents: [2, 755, 756, 757, 758, 790, ...range(1001, 1010), 1150],
      vendorLegitimateInterests: [1, 5, 9, 33],
    },
    segments: [Segment.CORE],
    expectEncoding: { vendorConsents: 'range', vendorLegitimateInterests: 'bitField' },
  },
  {
    name: 'service_specific_publisher_tc',
    description: 'service-specific string with publisher restrictions, purpose one treatment, non-standard stacks and a publisher TC segment',
    gvl: { vendorIds: range(1, 400), vendorListVersion: 48, tcfPolicyVersion: 2 },
    model: {
      cmpId: 7, cmpVersion: 31, consentScreen: 5, publisherCountryCode: 'GB',
      created: utc('2022-02-22T22:22:22.200Z'), lastUpdated: utc('2022-02-23T08:00:00.000Z'),
      isServiceSpecific: true, purposeOneTreatment: true, useNonStandardStacks: true,
      purposeConsents: [3, 4, 5, 6, 11], purposeLegitimateInterests: [2, 7],
      specialFeatureOptins: [2],
      vendorConsents: range(1, 90).filter((i) => i % 2 === 1),
      vendorLegitimateInterests: range(40, 80),
      publisherConsents: [1, 2, 3], publisherLegitimateInterests: [2, 7],
      numCustomPurposes: 4, publisherCustomConsents: [1, 3], publisherCustomLegitimateInterests: [2, 4],
      restrictions: [
        { purposeId: 2, type: RestrictionType.REQUIRE_CONSENT, vendors: [...range(10, 20), 25] },
        { purposeId: 9, type: RestrictionType.REQUIRE_LI, vendors: [30] },
        { purposeId: 3, type: RestrictionType.NOT_ALLOWED, vendors: [1, 2, 3, ...range(100, 110)] },
      ],
    },
    segments: undefined, // the library's default for a service-specific string: core + publisherTC
    expectSegments: ['core', 'publisherTC'],
  },
  {
    name: 'global_with_disclosed_vendors',
    description: 'globally scoped string as saved by a CMP: core + disclosed vendors segment',
    gvl: { vendorIds: [...range(1, 50), 60, 70, ...range(200, 210)], vendorListVersion: 300, tcfPolicyVersion: 5 },
    model: {
      cmpId: 300, cmpVersion: 12, consentScreen: 2, publisherCountryCode: 'IT',
      created: utc('2024-06-01T09:30:00.000Z'), lastUpdated: utc('2024-06-01T09:30:00.000Z'),
      purposeConsents: [1, 2, 7, 8, 9, 10], purposeLegitimateInterests: [2, 7, 8, 9, 10, 11],
      specialFeatureOptins: [1, 2],
      vendorConsents: [1, 2, 3, 10, 20, 30, 40, 60, 205],
      vendorLegitimateInterests: [4, 5, 6, 70, 200, 201],
    },
    segments: undefined, // default for a global string not for vendors: core + vendorsDisclosed
    expectSegments: ['core', 'vendorsDisclosed'],
  },
  {
    name: 'for_vendors_all_segments',
    description: 'string surfaced to vendors with out-of-band support: core, disclosed, allowed and publisher TC segments',
    gvl: { vendorIds: range(1, 1000), vendorListVersion: 77, tcfPolicyVersion: 4 },
    model: {
      cmpId: 28, cmpVersion: 3, consentScreen: 0, publisherCountryCode: 'ES',
      created: utc('2021-03-01T00:00:00.000Z'), lastUpdated: utc('2023-11-11T11:11:11.100Z'),
      supportOOB: true,
      purposeConsents: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], purposeLegitimateInterests: [],
      specialFeatureOptins: [1],
      vendorConsents: [...range(1, 30), 999], vendorLegitimateInterests: [],
      vendorsAllowed: [5, 6, 7, 900],
      publisherConsents: [1], publisherLegitimateInterests: [],
    },
    options: { isForVendors: true },
    segments: undefined,
    expectSegments: ['core', 'vendorsDisclosed', 'vendorsAllowed', 'publisherTC'],
  },
  {
    name: 'empty_vectors',
    description: 'nothing consented: every vector empty, max vendor id 0',
    gvl: { vendorIds: range(1, 10), vendorListVersion: 1, tcfPolicyVersion: 2 },
    model: {
      cmpId: 2, cmpVersion: 0, consentScreen: 0, publisherCountryCode: 'AA',
      created: utc('2020-01-01T00:00:00.000Z'), lastUpdated: utc('2020-01-01T00:00:00.000Z'),
      purposeConsents: [], purposeLegitimateInterests: [], specialFeatureOptins: [],
      vendorConsents: [], vendorLegitimateInterests: [],
    },
    segments: [Segment.CORE],
    expectEncoding: { vendorConsents: 'bitField', vendorLegitimateInterests: 'bitField' },
  },
  {
    name: 'all_bits_set',
    description: 'all 24 purposes, all 12 special features; vendors 1..64 as one range entry, LI 1..40 as bit field',
    gvl: { vendorIds: range(1, 100), vendorListVersion: 100, tcfPolicyVersion: 4 },
    model: {
      cmpId: 99, cmpVersion: 1, consentScreen: 9, publisherCountryCode: 'NL',
      created: utc('2023-01-01T00:00:00.050Z'), lastUpdated: utc('2023-01-01T00:00:01.049Z'),
      purposeConsents: range(1, 24), purposeLegitimateInterests: range(1, 24),
      specialFeatureOptins: range(1, 12),
      vendorConsents: range(1, 64), vendorLegitimateInterests: range(1, 40),
    },
    segments: [Segment.CORE],
    expectEncoding: { vendorConsents: 'range', vendorLegitimateInterests: 'bitField' },
  },
  {
    name: 'typical_100_vendors',
    description: 'a typical string: 100 consented vendors spread over ids 1..1150, 60 LI vendors as range singles (the bench input)',
    gvl: { vendorIds: range(1, 1200), vendorListVersion: 180, tcfPolicyVersion: 4 },
    model: {
      cmpId: 21, cmpVersion: 5, consentScreen: 2, publisherCountryCode: 'DE',
      created: utc('2024-09-10T07:00:00.000Z'), lastUpdated: utc('2024-09-10T07:00:00.000Z'),
      purposeConsents: range(1, 11), purposeLegitimateInterests: [2, 7, 8, 9, 10, 11],
      specialFeatureOptins: [1, 2],
      vendorConsents: spread(100, 11.5),
      vendorLegitimateInterests: spread(60, 19, 3),
    },
    segments: [Segment.CORE],
    expectEncoding: { vendorConsents: 'bitField', vendorLegitimateInterests: 'range' },
  },
  {
    name: 'range_mixed_singles_and_runs',
    description: 'range encoding with single ids and runs in both vendor sections',
    gvl: { vendorIds: range(1, 2100), vendorListVersion: 250, tcfPolicyVersion: 4 },
    model: {
      cmpId: 5, cmpVersion: 6, consentScreen: 7, publisherCountryCode: 'PL',
      created: utc('2024-02-29T12:00:00.000Z'), lastUpdated: utc('2024-03-01T12:00:00.000Z'),
      purposeConsents: [1, 8, 9, 10], purposeLegitimateInterests: [],
      specialFeatureOptins: [],
      vendorConsents: [...range(100, 150), 300, 302, 304, ...range(1000, 1003), 2000],
      vendorLegitimateInterests: [...range(500, 520), 900],
    },
    segments: [Segment.CORE],
    expectEncoding: { vendorConsents: 'range', vendorLegitimateInterests: 'range' },
  },
];

// ----------------------------------------------------------------------------------------------
// Encode
// ----------------------------------------------------------------------------------------------

function buildModel(c) {
  const gvl = makeGvl(c.gvl);
  const m = new TCModel(gvl);
  const s = c.model;
  m.cmpId = s.cmpId;
  m.cmpVersion = s.cmpVersion;
  m.consentScreen = s.consentScreen;
  m.publisherCountryCode = s.publisherCountryCode;
  m.isServiceSpecific = !!s.isServiceSpecific;
  m.purposeOneTreatment = !!s.purposeOneTreatment;
  m.useNonStandardStacks = !!s.useNonStandardStacks;
  m.supportOOB = !!s.supportOOB;
  m.purposeConsents.set(s.purposeConsents);
  m.purposeLegitimateInterests.set(s.purposeLegitimateInterests);
  m.specialFeatureOptins.set(s.specialFeatureOptins);
  m.vendorConsents.set(s.vendorConsents);
  m.vendorLegitimateInterests.set(s.vendorLegitimateInterests);
  if (s.vendorsAllowed) m.vendorsAllowed.set(s.vendorsAllowed);
  if (s.publisherConsents) m.publisherConsents.set(s.publisherConsents);
  if (s.publisherLegitimateInterests) m.publisherLegitimateInterests.set(s.publisherLegitimateInterests);
  if (s.numCustomPurposes !== undefined) m.numCustomPurposes = s.numCustomPurposes;
  if (s.publisherCustomConsents) m.publisherCustomConsents.set(s.publisherCustomConsents);
  if (s.publisherCustomLegitimateInterests) m.publisherCustomLegitimateInterests.set(s.publisherCustomLegitimateInterests);
  for (const r of s.restrictions ?? []) {
    const pr = new PurposeRestriction(r.purposeId, r.type);
    for (const v of r.vendors) m.publisherRestrictions.add(v, pr);
  }
  // The TCModel constructor stamps "now" (day precision): set the fixed dates last.
  m.created = s.created;
  m.lastUpdated = s.lastUpdated;
  return m;
}

function encode(c) {
  const m = buildModel(c);
  const options = { ...(c.options ?? {}) };
  if (c.segments) options.segments = c.segments;
  return TCString.encode(m, options);
}

// ----------------------------------------------------------------------------------------------
// Decode (with the library) and describe
// ----------------------------------------------------------------------------------------------

const SEGMENT_NAMES = ['core', 'vendorsDisclosed', 'vendorsAllowed', 'publisherTC'];
const CORE_VENDOR_SECTION_BIT = 213; // sum of the fixed core fields before MaxVendorId

const ids = (vector) => [...vector.values()].sort((a, b) => a - b);

/** MaxVendorId and encoding of the vendor section starting at `offset` of `bits`. */
function sectionHeader(bits, offset) {
  return {
    maxVendorId: parseInt(bits.substr(offset, 16), 2),
    encoding: bits.charAt(offset + 16) === '1' ? 'range' : 'bitField',
  };
}

function vendorVector(bits, offset, vector) {
  return { ...sectionHeader(bits, offset), ids: ids(vector) };
}

function describe(tcString) {
  const decoded = TCString.decode(tcString);
  const parts = tcString.split('.');
  const segments = parts.map((p) => SEGMENT_NAMES[parseInt(Base64Url.decode(p.charAt(0)).substr(0, 3), 2)]);
  const coreBits = Base64Url.decode(parts[0]);
  const liOffset = CORE_VENDOR_SECTION_BIT + decoded.vendorConsents.bitLength;
  const segmentBits = (name) => Base64Url.decode(parts[segments.indexOf(name)]);

  const restrictions = decoded.publisherRestrictions.getRestrictions().map((r) => ({
    purposeId: r.purposeId,
    restrictionType: r.restrictionType,
    vendorIds: decoded.publisherRestrictions.getVendors(r),
  }));
  restrictions.sort((a, b) => a.purposeId - b.purposeId || a.restrictionType - b.restrictionType);

  return {
    segments,
    decoded: {
      version: decoded.version,
      createdDeciseconds: decoded.created.getTime() / 100,
      created: decoded.created.toISOString(),
      lastUpdatedDeciseconds: decoded.lastUpdated.getTime() / 100,
      lastUpdated: decoded.lastUpdated.toISOString(),
      cmpId: decoded.cmpId,
      cmpVersion: decoded.cmpVersion,
      consentScreen: decoded.consentScreen,
      consentLanguage: decoded.consentLanguage,
      vendorListVersion: decoded.vendorListVersion,
      policyVersion: decoded.policyVersion,
      isServiceSpecific: decoded.isServiceSpecific,
      useNonStandardStacks: decoded.useNonStandardStacks,
      specialFeatureOptins: ids(decoded.specialFeatureOptins),
      purposeConsents: ids(decoded.purposeConsents),
      purposeLegitimateInterests: ids(decoded.purposeLegitimateInterests),
      purposeOneTreatment: decoded.purposeOneTreatment,
      publisherCountryCode: decoded.publisherCountryCode,
      vendorConsents: vendorVector(coreBits, CORE_VENDOR_SECTION_BIT, decoded.vendorConsents),
      vendorLegitimateInterests: vendorVector(coreBits, liOffset, decoded.vendorLegitimateInterests),
      publisherRestrictions: restrictions,
      vendorsDisclosed: segments.includes('vendorsDisclosed')
        ? vendorVector(segmentBits('vendorsDisclosed'), 3, decoded.vendorsDisclosed)
        : null,
      vendorsAllowed: segments.includes('vendorsAllowed')
        ? vendorVector(segmentBits('vendorsAllowed'), 3, decoded.vendorsAllowed)
        : null,
      publisherTC: segments.includes('publisherTC')
        ? {
          publisherConsents: ids(decoded.publisherConsents),
          publisherLegitimateInterests: ids(decoded.publisherLegitimateInterests),
          numCustomPurposes: decoded.numCustomPurposes,
          publisherCustomConsents: ids(decoded.publisherCustomConsents),
          publisherCustomLegitimateInterests: ids(decoded.publisherCustomLegitimateInterests),
        }
        : null,
    },
  };
}

function check(cond, msg) {
  if (!cond) throw new Error(`fixture self-check failed: ${msg}`);
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

const cases = CASES.map((c) => {
  const tcString = encode(c);
  const { segments, decoded } = describe(tcString);
  // Self-checks: the case is what it says it is (otherwise the fixture would silently test
  // something else, e.g. a bit field where we meant a range).
  for (const [key, enc] of Object.entries(c.expectEncoding ?? {})) {
    check(decoded[key].encoding === enc, `${c.name}: ${key} encoded as ${decoded[key].encoding}, wanted ${enc}`);
  }
  if (c.expectSegments) check(same(segments, c.expectSegments), `${c.name}: segments ${segments}`);
  check(same(decoded.purposeConsents, c.model.purposeConsents), `${c.name}: purposes consent`);
  check(same(decoded.vendorConsents.ids, c.model.vendorConsents), `${c.name}: vendor consents`);
  check(same(decoded.vendorLegitimateInterests.ids, c.model.vendorLegitimateInterests), `${c.name}: vendor LI`);
  check(decoded.vendorConsents.maxVendorId === Math.max(0, ...c.model.vendorConsents), `${c.name}: max vendor id`);
  return { name: c.name, description: c.description, tcString, segments, decoded };
});

// Strings the gateway must reject, produced by the same library.
const v1 = (() => {
  const c = CASES[0];
  return TCString.encode(buildModel(c), { version: 1, segments: [Segment.CORE] });
})();
check(TCString.decode(v1).version === 1, 'v1 string');

const out = {
  about: 'TC strings encoded by @iabtcf/core and what TCString.decode reads from them; maxVendorId and encoding are read from the section headers. Generated by scripts/gen-tcf-fixtures/gen.mjs: do not edit by hand.',
  library: `@iabtcf/core ${LIB_VERSION}`,
  cases,
  rejected: [
    { name: 'tcf_v1', tcString: v1, reason: 'encoding version 1 (TCF v1.1); only version 2 is accepted' },
  ],
};

writeFileSync(OUT, JSON.stringify(out, null, 2) + '\n');
console.log(`wrote ${cases.length} cases + ${out.rejected.length} rejected to ${OUT}`);
